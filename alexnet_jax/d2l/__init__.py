"""The bridge to d2l's PyTorch: its AlexNet and train_ch6, weights between the frameworks.

Also the side-by-side run. Imports training/ and below; PyTorch only where it is used.
"""
