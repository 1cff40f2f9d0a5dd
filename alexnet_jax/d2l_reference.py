"""d2l's PyTorch AlexNet, verbatim from the notebook (../shared/reference), and its init.

Used by the equivalence suite and the benchmark; needs torch (imported here, not by the
package).
"""

import torch
from torch import nn


def d2l_alexnet() -> nn.Sequential:
    net = nn.Sequential(
        # 这里,我们使用一个11*11的更大窗口来捕捉对象
        # 同时,步幅为4,以减少输出的高度和宽度
        # 另外,输出通道的数目远大于LeNet
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        # 减小卷积窗口,使用填充为2来使得输入与输出的高和宽一致,且增大输出通道数
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        # 使用三个连续的卷积层和较小的卷积窗口
        # 除了最后的卷积层,输出通道的数量进一步增加
        # 在前两个卷积层之后,汇聚层不用于减少输入的高度和宽度
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        # 使用dropout层来减轻过度拟合
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        # 最后是输出层。由于这里使用Fashion-MNIST,所以用类别数为10,而非论文中的1000
        nn.Linear(4096, 10))
    return net


def init_weights(m):
    """d2l.train_ch6's init: Xavier-uniform weights, biases left at PyTorch's default."""
    if type(m) is nn.Linear or type(m) is nn.Conv2d:
        nn.init.xavier_uniform_(m.weight)


def d2l_net(seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    net = d2l_alexnet()
    net.apply(init_weights)
    return net.to(dtype)


def d2l_train_step(net: nn.Module, lr: float):
    """train_ch6's inner loop body: SGD on the mean cross-entropy of one batch."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def nhwc_to_nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
