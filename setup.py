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
        # whole-slide images: OpenSlide (wheels bundle the C library) and tifffile's JPEG/JPEG 2000/LZW/WebP tiles
        "openslide-bin>=4.0.0",
        "openslide-python>=1.4.1",
        "imagecodecs>=2024.1.1",
        "numpy>=1.24",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "fire>=0.5",
        "pyyaml>=6",
        "einops>=0.7",
    ],
    extras_require={
        # The MONAI Label app (apps/pixelcam, tasks in monai_pixelcam/label). monailabel 0.8.5 itself is installed with
        # `pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1` (README, .ci/run): its declared
        # requirements pull sam2 (a source build), torchvision (a second, CUDA, torch) and numpy<2 (through
        # pydicom-seg). These are the requirements its server, BasicInferTask and TrainTask import here;
        # it fails to import with pydicom 3.
        "label": [
            "pydicom>=2.4.4,<3",
            "dicomweb-client[gcp]>=0.59.1",
            "fastapi>=0.110.2",
            "uvicorn>=0.29.0",
            "python-multipart>=0.0.9",
            "pydantic>=2.7.0",
            "pydantic-settings>=2.2.1",
            "python-dotenv>=1.0.1",
            "requests>=2.31.0",
            "requests-toolbelt>=1.0.0",
            "schedule>=1.2.1",
            "timeloop>=1.0.2",
            "expiring-dict>=1.1.0",
            "cachetools>=5.3.3",
            "watchdog>=4.0.0",
            "filelock>=3.11.0",
            "psutil>=5.9",
            "pyjwt>=2.8.0",
            "passlib>=1.7.4",
            "girder-client>=3.2.3",
            "itk-core>=5.3",  # only imported (by monailabel.transform.writer); the full itk is 1.5 GB
            "SimpleITK>=2.2",
            "pynrrd>=1.0.0",
            "jsonschema>=4",  # pydicom-seg's, installed without its requirements
        ],
        # encoders from local Hugging Face snapshots (monai_pixelcam.networks.snapshot): ViT/DeiT, DINOv2
        "foundation": ["transformers>=5,<6"],
        "dev": ["pytest>=7", "jsonschema>=4", "transformers>=5,<6"],
    },
)
