"""ResNet-20/32 on CIFAR-10 (or padded MNIST), compressed by GKPD, fine-tuned."""
