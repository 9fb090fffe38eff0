"""Error-driven choice of a compressed layer's method, split and rank.

For a trained weight and a parameter budget, every candidate replacement that
fits is scored by the error it would reach, and the list comes back ranked:

* **Kronecker** (Van Loan & Pitsianis): for a split ``(m1, m2) x (n1, n2)`` the
  error of the best rank-``r`` sum ``sum A_r ⊗ B_r`` is the norm of the
  rearranged matrix's singular values past ``r``, so *one* spectrum per split
  scores every rank at once; the budget then fixes the largest rank that fits.
* **Low rank**: the tail of ``W``'s own spectrum, again every rank at once. A
  split ``(m, 1) x (1, n)`` (or ``(1, n) x (m, 1)``) is an outer product, i.e.
  low rank in disguise: it is labelled ``"low_rank"``.
* **KFC** formulations (a dense layer reading a flattened ``H x W x C`` map):
  the same rearrangement over the formulation's axis groups.
* **GKPD** (a conv kernel ``[kh, kw, C_in, C_out]``): the same over the four
  axis splits; ``a = (kh, kw, C_in, 1), b = (1, 1, 1, C_out)`` is the low-rank
  conv (a conv to ``r`` channels and a 1x1 conv) and is labelled as such.

Speed: a spectrum is the Gram matrix's eigenvalues when that is cheap, and
otherwise only the top ``r + oversample`` singular values from a randomized
range finder with power iterations (Halko, Martinsson & Tropp 2011). Those
Ritz values never exceed the true ones, so an estimated error is an upper
bound of that split's optimum (``SearchCandidate.exact`` says which). Large weights
(``>= 2**20`` entries) are screened with one-pass float32 sketches and the
best few re-scored with power iterations. Splits are pruned before any SVD
of their own when a lower bound already loses: ``A ⊗ B`` of rank ``r`` has
matrix rank at most ``r * min(m1, n1) * min(m2, n2)``, so its error is at
least low rank's at that rank (Eckart–Young), bounded from ``W``'s sketched
spectrum (valid however rough the sketch, see :func:`_lower_bound`).

Data-aware scoring (``input_cov``, the layer input's second moment ``C =
E[x xᵀ]``) measures ``||Lᵀ(W - Ŵ)||_F / ||Lᵀ W||_F`` with ``C = L Lᵀ``, the
relative error of the outputs on that data. Low rank is exact (the spectrum
of ``Lᵀ W``: whitened SVD). A Kronecker split is scored by the closed form for
the nearest Kronecker-factored covariance ``C ≈ C1 ⊗ C2`` over the same split
(whitening by ``L1 ⊗ L2`` keeps the Kronecker structure, so the whitened NKP
is exact for it); the ``refine`` best are then re-measured under the true
``C`` with that closed-form answer (an achievable point, so an upper bound of
the data-aware optimum), or with a caller's ``fit`` (e.g. an ALS solver).
"""

from kfc_jax._search._conv import search_conv as search_conv
from kfc_jax._search._dense import search_dense as search_dense
from kfc_jax._search._results import SearchCandidate as SearchCandidate
from kfc_jax._search._results import SearchResult as SearchResult
from kfc_jax._search._spectra import covariance_root as covariance_root
