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


def working_set(version, marker, package="tensorflow-cpu"):
    """requirements/tf-<version>.txt (TensorFlow with the tensorflow-estimator,
    numpy and protobuf it imports with), `package` for tensorflow-cpu, each
    requirement for the Pythons `marker` names."""
    with open(os.path.join(HERE, "requirements", "tf-%s.txt" % version)) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    return ["%s; %s" % (package + line[len("tensorflow-cpu"):]
                        if line.startswith("tensorflow-cpu") else line, marker)
            for line in lines]


# TensorFlow is an extra: on each Python, the newest TensorFlow that installs
# there and still ships tf.estimator (removed in 2.16). Python 3.12 and later
# have none. requirements/ pins the other supported versions.
TF1 = working_set("1.15", "python_version < '3.8'")


def tensorflow_extra(package):
    """The extra that installs `package` (tensorflow-cpu or tensorflow) on each Python."""
    return (TF1 + working_set("2.13", "python_version == '3.8'", package)
            + working_set("2.15", "python_version >= '3.9' and python_version < '3.12'", package))


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
        "cpu": tensorflow_extra("tensorflow-cpu"),
        "gpu": tensorflow_extra("tensorflow"),
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
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
