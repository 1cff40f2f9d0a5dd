"""d2l's PyTorch AlexNet, verbatim from the notebook (d2l chapter 7.1, "AlexNet"), and its init.

Used by the equivalence suite and the benchmark; needs torch (imported here, not by the
package).
"""

import time

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


def d2l_net(seed: int = 0, dtype=torch.float32, dropout: float = 0.5) -> nn.Sequential:
    """d2l's net as train_ch6 initialises it; `dropout` other than d2l's 0.5 for checks."""
    torch.manual_seed(seed)
    net = d2l_alexnet()
    net.apply(init_weights)
    for layer in net:
        if isinstance(layer, nn.Dropout):
            layer.p = dropout
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


# d2l's train_ch6 and its helpers (d2l/torch.py), line for line but for two changes: the net
# comes initialised (d2l_net) and the animator's points are returned instead of drawn.


class Accumulator:
    """d2l.Accumulator: sums over n variables, in Python floats."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def __getitem__(self, idx):
        return self.data[idx]


def accuracy(y_hat, y):
    """d2l.accuracy: the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net, data_iter, device=None):
    """d2l.evaluate_accuracy_gpu: accuracy over every example of data_iter, eval mode."""
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device, out=print):
    """d2l.train_ch6 on an initialised net: its points (epoch, train loss, train acc, test
    acc), as its Animator would plot them, and its two printed lines."""
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    points = []
    timer_sum, num_batches = 0.0, len(train_iter)
    for epoch in range(num_epochs):
        metric = Accumulator(3)
        net.train()
        for i, (X, y) in enumerate(train_iter):
            start = time.perf_counter()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741 (d2l's name)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
            timer_sum += time.perf_counter() - start
            train_l = metric[0] / metric[2]
            train_acc = metric[1] / metric[2]
            if (i + 1) % (num_batches // 5) == 0 or i == num_batches - 1:
                points.append({"epoch": epoch + (i + 1) / num_batches, "train_loss": train_l,
                               "train_acc": train_acc, "test_acc": None})
        test_acc = evaluate_accuracy_gpu(net, test_iter)
        points.append({"epoch": epoch + 1, "train_loss": None, "train_acc": None,
                       "test_acc": test_acc})
    out(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    out(f"{metric[2] * num_epochs / timer_sum:.1f} examples/sec on {str(device)}")
    return points
