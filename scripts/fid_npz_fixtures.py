#!/usr/bin/env python3
"""Writes the small numpy-made .npz fixtures that lossfloor-fid's tests read.

np.savez (stored members, as EDM's fid.py writes its reference statistics) and
np.savez_compressed (deflated members), with float64 mu [3] and sigma [3, 3];
sigma of the compressed file is Fortran-ordered to exercise that path.
Usage: python3 scripts/fid_npz_fixtures.py
"""
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "crates/lossfloor-fid/tests/fixtures")
mu = np.array([0.5, -1.25, 3.0], dtype=np.float64)
sigma = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, -0.2], [0.1, -0.2, 3.0]], dtype=np.float64)
os.makedirs(OUT, exist_ok=True)
np.savez(os.path.join(OUT, "numpy_savez.npz"), mu=mu, sigma=sigma)
np.savez_compressed(os.path.join(OUT, "numpy_savez_compressed.npz"), mu=mu,
                    sigma=np.asfortranarray(sigma + np.triu(np.ones((3, 3)), 1)))
print("wrote", OUT)
