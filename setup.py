"""estimator-ema: weight averaging (EMA and SWA) for TensorFlow Estimators."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    scope = {}
    with open(os.path.join(HERE, "estimator_ema", "_version.py")) as handle:
        exec(handle.read(), scope)
    return scope["__version__"]


def read_readme():
    with open(os.path.join(HERE, "README.md")) as handle:
        return handle.read()


# TensorFlow is an extra: each pins a build that still ships tf.estimator
# (removed in 2.16).
TF2_CPU = "tensorflow-cpu>=2.12,<2.16; python_version>='3.8'"
TF2_GPU = "tensorflow>=2.12,<2.16; python_version>='3.8'"
TF1 = ["tensorflow==1.15.5; python_version<'3.8'", "protobuf<3.21; python_version<'3.8'"]

setup(
    name="estimator-ema",
    version=read_version(),
    description="Exponential moving averages and stochastic weight averaging for "
                "TensorFlow Estimators.",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["estimator_ema", "estimator_ema.*"]),
    python_requires=">=3.7",
    install_requires=["numpy"],
    extras_require={
        "cpu": [TF2_CPU] + TF1,
        "gpu": [TF2_GPU] + TF1,
        "tf1": TF1,
        "test": ["pytest>=6", "tf-slim>=1.1", "matplotlib"],
        "plot": ["matplotlib"],
        # The documentation site (mkdocs build --strict), on Python 3.11; mkdocstrings
        # lays out the API pages' signatures with ruff.
        "docs": ["mkdocs==1.6.1", "mkdocs-material==9.8.2", "mkdocstrings[python]==1.0.8",
                 "mkdocstrings-python==2.0.11", "griffelib==2.4.1", "ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["estimator-ema=estimator_ema.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.7",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
