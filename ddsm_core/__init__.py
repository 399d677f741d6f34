"""ddsm_core: import DDSM patch datasets, train transfer-learning classifiers, evaluate them.

The library never imports streamlit; the dashboard only reads what it writes.
"""

__version__ = "0.1.0"
