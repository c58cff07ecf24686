"""The one thing pyproject.toml cannot say: the top-level gin/ folder ships in the wheel as
keras_largebatch/gin/ (package data), so an installed package carries its configs
(keras_largebatch/configs.py finds them in either place). Everything else is pyproject.toml.

    pip wheel .            # keras_largebatch-*.whl with keras_largebatch/gin/**/*.gin
"""

from setuptools import find_namespace_packages, find_packages, setup

CONFIGS = ["keras_largebatch.gin",
           *(f"keras_largebatch.gin.{name}" for name in find_namespace_packages(where="gin"))]

setup(
    packages=[*find_packages(include=["keras_largebatch*"]), *CONFIGS],
    package_dir={"keras_largebatch.gin": "gin"},
    package_data={name: ["*.gin"] for name in CONFIGS},
)
