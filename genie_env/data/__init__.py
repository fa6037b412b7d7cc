"""Video data: H5 episodes, the clip dataset, and collectors that record new episodes."""
from genie_env.data.h5 import ClipDataset, H5DataError, H5Episodes, find_h5_files

__all__ = ["ClipDataset", "H5DataError", "H5Episodes", "find_h5_files"]
