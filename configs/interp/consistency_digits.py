"""Neuron consistency on scikit-learn's 8x8 digits (offline): standard, adversarial (lambda_c = 0)
and consistent-loss training, 3 seeds each, then the table (interp/README.md).

Command:   python main.py --config=configs/interp/consistency_digits.py --workdir=runs/interp_digits
           python main.py --config=configs/interp/consistency_digits.py --workdir=runs/interp_digits \
               --mode=report --config.report.attack.name=fgsm       # the table under another attack
           python -m common.sweep --config=configs/interp/consistency_digits.py \
               --workdir=runs/interp_digits_sweep                    # lambda_c sweep (get_sweep)
Hardware:  2 CPU cores (see interp/README.md for the measured time).
Model:     the `digits` preset CNN (conv 8, conv 16, fc 32, batch norm), Adam 3e-3 cosine, batch 64.
Attacks:   training PGD eps 0.2, 7 steps of 0.05, random start; report PGD eps 0.2, 20 steps of
           0.02, random start (white-box; transfer from the other 2 seeds' ensemble).
Expected:  the table in interp/README.md (standard: consistency drops from real to adversarial).
Paper:     no digits numbers (the papers use ImageNet CNNs; their numbers are not public).
Variant:   `:smoke` runs a tiny model for 3 steps and the report on 64 images (seconds).
"""

from configs.interp import base

LAMBDAS = {"": (0.03, 0.3, 1.0, 3.0),        # around the default 0.1 (the main run)
           "normalized": (1.0, 3.0, 10.0)}


def get_config(arg: str | None = None):
  c = base.get_config()
  if arg == "smoke":
    c = base.smoke(c)
  elif arg == "normalized":
    c.consistent.update(distance="normalized", lambda_c=3.0)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of consistency_digits.py: expected 'smoke', "
                     "'normalized' or none")
  return c


def get_sweep(arg: str | None = None):
  """lambda_c of the consistent loss (the adversarial mode is its lambda_c = 0 ablation), the
  consistent mode only (the other two do not depend on it)."""
  lambdas = LAMBDAS.get(arg or "", LAMBDAS[""])
  return [{"consistent.lambda_c": lam, "train.modes": "consistent",
           "report.similarities": "identity"} for lam in lambdas]
