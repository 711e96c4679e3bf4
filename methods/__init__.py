"""SSL methods, one short module each. Importing this package registers all of them in `METHODS`.

Imports are explicit: a method that fails to import fails loudly here instead of vanishing from the list.
"""
from methods.base import METHODS, Labeled, Method, MethodContext  # noqa: F401
from methods import (  # noqa: F401  (registration)
    supervised, mean_teacher, ua_mt, entropy_min, cps, ict, cct, urpc, dan, mcnet, bcp, ict_med, ctct, advmim,
    fixmatch, semsim, dct, ssnet, cml, sassnet, dtc, caml, mcf, dk_uxnet,
)
