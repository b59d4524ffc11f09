"""The seed's simple CNN in TensorFlow's v1 graph API (tf.nn ops: tf.compat.v1.layers needs Keras 2)."""

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


def _conv_bn_relu(x, name, out_channels, training):
    with v1.variable_scope(name):
        in_channels = x.shape[-1]
        k = v1.get_variable("kernel", [3, 3, in_channels, out_channels], initializer=v1.glorot_uniform_initializer())
        b = v1.get_variable("bias", [out_channels], initializer=v1.zeros_initializer())
        y = tf.nn.conv2d(x, k, 2, "VALID") + b
        gamma = v1.get_variable("gamma", [out_channels], initializer=v1.ones_initializer())
        beta = v1.get_variable("beta", [out_channels], initializer=v1.zeros_initializer())
        mean_ema = v1.get_variable("moving_mean", [out_channels], initializer=v1.zeros_initializer(), trainable=False)
        var_ema = v1.get_variable("moving_variance", [out_channels], initializer=v1.ones_initializer(), trainable=False)
        mean, var = tf.nn.moments(y, [0, 1, 2])
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, mean_ema.assign(0.9 * mean_ema + 0.1 * mean))
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, var_ema.assign(0.9 * var_ema + 0.1 * var))
        mean, var = tf.cond(training, lambda: (mean, var), lambda: (mean_ema.read_value(), var_ema.read_value()))
        return tf.nn.relu(tf.nn.batch_normalization(y, mean, var, beta, gamma, 1e-5))


def seed_cnn(x, training):
    """x: NHWC (N, 28, 28, 1) -> logits (N, 10)."""
    h = _conv_bn_relu(x, "conv1", 64, training)
    h = _conv_bn_relu(h, "conv2", 128, training)
    h = _conv_bn_relu(h, "conv3", 256, training)
    h = tf.reshape(h, [-1, 1024])
    with v1.variable_scope("linear1"):
        w = v1.get_variable("kernel", [1024, 10], initializer=v1.glorot_uniform_initializer())
        b = v1.get_variable("bias", [10], initializer=v1.zeros_initializer())
    return tf.matmul(h, w) + b


def accuracy(session, logits, x, training, images, labels):
    hits = 0
    for i in range(0, len(images), 1000):
        pred = session.run(logits, {x: images[i:i + 1000], training: False})
        hits += int((pred.argmax(1) == labels[i:i + 1000]).sum())
    return hits / len(images)


def nhwc(images):
    return np.transpose(images, (0, 2, 3, 1))
