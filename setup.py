"""Packaging for nginx-upstream-reloader."""

from setuptools import find_packages, setup

setup(
    name="nginx-upstream-reloader",
    version="0.1.0",
    description="Keep nginx upstreams in step with instances registered in ZooKeeper, without reloads.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["reloader", "reloader.*"]),
    # The Lua module nginx loads in Lua mode ships inside the package.
    package_data={"reloader.nginx": ["lua/*.lua"]},
    include_package_data=True,
    install_requires=[
        # reloader/sources/kazoo_protocol.py extends kazoo's internals: only the
        # releases it is tested with (its TESTED_KAZOO; a test checks both agree).
        "kazoo>=2.11,<2.12",
        # kazoo's SASL (sasl: in a cluster) needs it; without it kazoo raises "Missing SASL support".
        "pure-sasl>=0.6",
        "prometheus-client>=0.17",
        "python-daemon>=3.0",
        "PyYAML>=6.0",
        "requests>=2.28",
        # The dyups and Lua outputs parse nginx's answers with it (reloader/outputs/http.py).
        "httptools>=0.6,<1",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
        ],
    },
    entry_points={"console_scripts": ["nginx-upstream-reloader = reloader.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
    ],
)
