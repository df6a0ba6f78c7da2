"""Installable package ``monai-pixelcam``: PixelCAM weakly supervised localization for histology on MONAI."""

from setuptools import find_packages, setup

setup(
    name="monai-pixelcam",
    version="0.1.0",
    description="PixelCAM: weakly supervised localization of regions of interest in histology, as a MONAI package and bundle",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["monai_pixelcam", "monai_pixelcam.*"]),
    include_package_data=True,
    install_requires=[
        "monai>=1.6,<1.7",
        "torch>=2.8",
        "pytorch-ignite>=0.5",
        "nibabel>=5",
        "tensorboard>=2.14",
        "scikit-learn>=1.3",
        "scikit-image>=0.22",
        "pillow>=10",
        "tifffile>=2023.7",
        "numpy>=1.24",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "fire>=0.5",
        "pyyaml>=6",
        "einops>=0.7",
    ],
    extras_require={
        # MONAI Label 0.8.5 fails to import with pydicom 3 (see ARCHITECTURE.md).
        "label": ["monailabel==0.8.5", "pydicom<3"],
        "dev": ["pytest>=7", "jsonschema>=4"],
    },
)
