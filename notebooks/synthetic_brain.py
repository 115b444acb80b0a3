"""Whole-brain synthetic fMRI for the example notebooks (no downloads).

The brain mask is nilearn's 2 mm MNI152 mask, which ships inside nilearn's
wheel. Parcels are k-means clusters of the mask's voxel positions, numbered
from front to back so that neighbouring ids are neighbouring parcels. Each
parcel belongs to one of a few "networks" (by position); a run is a slow
network signal shared by that network's parcels, plus a parcel signal and voxel
noise, so the parcel-by-parcel correlation matrix shows the networks.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nilearn import datasets
from sklearn.cluster import KMeans


def brain_mask() -> nib.Nifti1Image:
    """nilearn's 2 mm MNI152 brain mask (99 x 117 x 95 voxels)."""
    return datasets.load_mni152_brain_mask(resolution=2)


def parcellation(mask: nib.Nifti1Image, n_parcels: int = 200) -> nib.Nifti1Image:
    """An int16 atlas of ``n_parcels`` compact parcels inside ``mask`` (0 outside)."""
    inside = np.asarray(mask.dataobj) > 0
    ijk = np.argwhere(inside)
    xyz = nib.affines.apply_affine(mask.affine, ijk)
    km = KMeans(n_clusters=n_parcels, n_init=1, random_state=0).fit(xyz[::20])
    labels = km.predict(xyz)
    order = np.argsort(np.argsort(-km.cluster_centers_[:, 1]))  # front to back
    atlas = np.zeros(inside.shape, dtype=np.int16)
    atlas[inside] = order[labels] + 1
    return nib.Nifti1Image(atlas, mask.affine)


def network_of(atlas: nib.Nifti1Image, n_networks: int = 6) -> np.ndarray:
    """Network (0..n_networks-1) of each parcel id 1..N, from its centre's position."""
    data = np.asarray(atlas.dataobj)
    ids = np.arange(1, data.max() + 1)
    ijk = np.argwhere(data > 0)
    labels = data[data > 0]
    centre = np.stack([np.bincount(labels, ijk[:, a])[ids] for a in range(3)], 1)
    centre /= np.bincount(labels)[ids, None]
    # left/right x front/middle/back
    side = (centre[:, 0] > data.shape[0] / 2).astype(int)
    band = np.digitize(centre[:, 1], np.quantile(centre[:, 1], [1 / 3, 2 / 3]))
    return (side * 3 + band) % n_networks


def bold_run(
    atlas: nib.Nifti1Image, n_time: int = 60, tr: float = 2.0, seed: int = 0
) -> nib.Nifti1Image:
    """A float32 4-D run: network + parcel signals + voxel noise, around 100."""
    rng = np.random.default_rng(seed)
    data = np.asarray(atlas.dataobj)
    network = network_of(atlas)
    slow = rng.standard_normal((network.max() + 1, n_time)).cumsum(1)
    slow = (slow - slow.mean(1, keepdims=True)) / slow.std(1, keepdims=True)
    parcel = slow[network] + 0.7 * rng.standard_normal((network.size, n_time))
    inside = data > 0
    values = 100 + 2 * parcel[data[inside] - 1]
    values += rng.standard_normal(values.shape, dtype=np.float32)
    bold = np.zeros((*data.shape, n_time), dtype=np.float32)
    bold[inside] = values
    img = nib.Nifti1Image(bold, atlas.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    return img
