"""The results table of the consistency papers on the trained models of a workdir.

For every training mode and seed (the EMA model of its final checkpoint), with x* made by the
`report.attack` block (L_inf, on [0, 1] images):

- test split: clean accuracy; white-box accuracy (x* on the model itself); transferred accuracy (x*
  made on the ensemble of the OTHER seeds' models of the same mode, fused in logits, Dong et al.
  2018: the ensemble optimisation of arXiv 1708.05493; null with one seed); the representation
  distance mean_i ||phi(x_i) - phi(x*_i)||^2 at `model.layer` with white-box x*, and the same
  divided by mean_i ||phi(x_i)||^2 (a model can shrink the first by shrinking phi);
- the probe pool (`report.split`, `report.num_examples`): for each layer of `report.layers` and each
  similarity of `report.similarities`, the mean consistency p^T A p of the neurons' top-k inputs
  among the real images, among their white-box adversarial images (labelled with the source image's
  class) and among the union. The mean runs over the live neurons: those whose k-th largest
  activation on the real pool is > 0 (a neuron that fewer than k real images activate has no
  defined top-k); the same neurons in all three sets.

Outputs (main process): `results.json` (schema in interp/README.md), `results.md` (the tables, mean
+- standard error over seeds) and `pictures/<mode>_<layer>.png` (seed 0: the most consistent live
neurons on real images, their top real and top adversarial inputs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx

from common import io, mesh as mesh_lib
from interp import attacks, consistency as cons, models, pictures, training

SETS = ("real", "adversarial", "union")


def split_arrays(data, split: str, limit: int = 0, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(images in [0, 1] [N, H, W, C], labels [N]) of a split: all of it, or `limit` > 0 examples
  drawn without replacement by `seed` (not the first ones: some sources are sorted by class),
  kept in index order."""
  source = {"train": data.train, "test": data.test}[split]
  labels = data.labels(split)
  n = len(labels)
  idx = np.arange(n)
  if 0 < limit < n:
    idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
  images = np.concatenate([data.preprocess(source[idx[i:i + 1000]], None)
                           for i in range(0, len(idx), 1000)])
  return (images + 1.0) / 2.0, labels[idx]


class Evaluator:
  """Jitted eval-mode functions of one architecture; a model's nnx.State is an argument, so every
  mode and seed reuses one compiled program. Batches are padded to `batch_size` and sharded over
  the mesh's data axis."""

  def __init__(self, config, graphdef: nnx.GraphDef, mesh):
    self.config, self.mesh = config, mesh
    self.batch_size = config.report.batch_size
    attack, layers, phi = config.report.attack, tuple(config.report.layers), config.model.layer
    logits_of = lambda st: (lambda z: models.apply(graphdef, st, z)[0])

    def features(st, x):
      logits, feats, _ = models.apply(graphdef, st, x)
      acts = {name: models.neuron_activations(feats[name]) for name in layers}
      return logits, acts, feats[phi].reshape(x.shape[0], -1)

    self.features = jax.jit(features)
    self.white_box = jax.jit(
        lambda st, x, y, key: training.adversarial(logits_of(st), x, y, attack, key))
    self.transfer = jax.jit(lambda sts, x, y, key: training.adversarial(
        attacks.ensemble_logits([logits_of(st) for st in sts]), x, y, attack, key))

  def map(self, fn: Callable, arrays: Sequence[np.ndarray], key: jax.Array) -> Any:
    """fn(*batch, key_b) over padded, sharded batches; outputs trimmed and concatenated on host."""
    n, size, outs = len(arrays[0]), self.batch_size, []
    for b, start in enumerate(range(0, n, size)):
      chunk = [_pad(a[start:start + size], size) for a in arrays]
      out = fn(*_shard(chunk, self.mesh), jax.random.fold_in(key, b))
      count = min(size, n - start)
      outs.append(jax.tree.map(lambda o: mesh_lib.to_host(o)[:count], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def _shard(arrays: Sequence[np.ndarray], mesh) -> list[jax.Array]:
  """This process's slice of each global batch, as global arrays split over the data axis."""
  procs, pid = jax.process_count(), jax.process_index()
  local = len(arrays[0]) // procs
  return mesh_lib.shard_batch([a[pid * local:(pid + 1) * local] for a in arrays], mesh)


def seed_states(program, state, num_seeds: int) -> list[nnx.State]:
  """The whole nnx.State of each seed's EMA model, from a (seed-stacked) TrainState."""
  out = []
  for i in range(num_seeds):
    one = jax.tree.map(lambda a: a[i], state) if num_seeds > 1 else state
    out.append(nnx.state(program.model(one)))
  return out


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, -1) == labels))


def layer_consistency(real: np.ndarray, adv: np.ndarray, labels: np.ndarray,
                      similarities: Mapping[str, np.ndarray], k: int) -> dict[str, Any]:
  """Consistency of one layer's neurons on the real / adversarial / union pool.

  Args:
    real, adv: neuron activations [N, U] on the real pool and on its adversarial images.
    labels: [N] classes (of the source images, for adversarial ones).
    similarities: {name: A [C, C]}.
    k: top-k size.

  Returns:
    {"live": number of live neurons, "scores": {similarity: {set: [U] per-neuron}},
     "mean": {similarity: {set: mean over live neurons, or None}}}.
  """
  top = lambda acts: cons.TopK(*(np.asarray(a) for a in cons.top_k_over_array(acts, k)))
  real_top, adv_top = top(real), top(adv)
  live = real_top.values[:, -1] > 0
  scores, means = {}, {}
  for name, a in similarities.items():
    scores[name] = cons.consistency_by_set(real_top, adv_top, labels, labels, a)
    means[name] = {s: float(v[live].mean()) if live.any() else None
                   for s, v in scores[name].items()}
  return {"live": int(live.sum()), "scores": scores, "mean": means, "real_top": real_top,
          "adv_top": adv_top}


def evaluate_model(ev: Evaluator, state: nnx.State, sources: Sequence[nnx.State], test, pool,
                   similarities: Mapping[str, np.ndarray], key: jax.Array) -> dict[str, Any]:
  """Every number of the table for one model (see the module docstring).

  Args:
    ev: the Evaluator.
    state: the model's nnx.State; sources: the other seeds' states (transfer; may be empty).
    test, pool: (images [N, ...] in [0, 1], labels [N]) of the test split and the probe pool.
    similarities: {name: A}.
    key: the attacks' key (the same for every model, so they see the same random starts).

  Returns:
    The per-seed record of results.json, plus "_pool" (arrays for the pictures).
  """
  cfg = ev.config
  k_test, k_transfer, k_pool = jax.random.split(key, 3)
  x, y = test
  logits, _, phi = ev.map(lambda a, b, kb: ev.features(state, a), (x, y), k_test)
  x_wb = ev.map(lambda a, b, kb: ev.white_box(state, a, b, kb), (x, y), k_test)
  logits_wb, _, phi_wb = ev.map(lambda a, b, kb: ev.features(state, a), (x_wb, y), k_test)
  distance = np.sum((phi - phi_wb) ** 2, axis=1)
  record = {"clean_accuracy": _accuracy(logits, y), "white_box_accuracy": _accuracy(logits_wb, y),
            "transfer_accuracy": None,
            "representation_distance": float(distance.mean()),
            "relative_distance": float(distance.mean() / max(np.sum(phi ** 2, 1).mean(), 1e-12))}
  if sources:
    x_tr = ev.map(lambda a, b, kb: ev.transfer(tuple(sources), a, b, kb), (x, y), k_transfer)
    logits_tr = ev.map(lambda a, b, kb: ev.features(state, a)[0], (x_tr, y), k_transfer)
    record["transfer_accuracy"] = _accuracy(logits_tr, y)
  px, py = pool
  _, acts, _ = ev.map(lambda a, b, kb: ev.features(state, a), (px, py), k_pool)
  px_adv = ev.map(lambda a, b, kb: ev.white_box(state, a, b, kb), (px, py), k_pool)
  logits_adv, acts_adv, _ = ev.map(lambda a, b, kb: ev.features(state, a), (px_adv, py), k_pool)
  record["pool_adversarial_accuracy"] = _accuracy(logits_adv, py)
  layers = {name: layer_consistency(acts[name], acts_adv[name], py, similarities,
                                    cfg.report.k) for name in cfg.report.layers}
  record["consistency"] = {name: r["mean"] for name, r in layers.items()}
  record["live_neurons"] = {name: r["live"] for name, r in layers.items()}
  record["_pool"] = {"adv_images": px_adv, "layers": layers}
  return record


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a/b': 1} (leaves are numbers or None)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
  """{metric path: {"mean", "stderr"}} over seeds (stderr = std (ddof 1) / sqrt(S); None for one
  seed); a metric that is None for some seed is averaged over the others."""
  flat = [flatten({k: v for k, v in r.items() if k not in ("seed", "_pool")}) for r in records]
  out = {}
  for name in flat[0]:
    values = np.array([f[name] for f in flat if f.get(name) is not None], np.float64)
    if not len(values):
      out[name] = {"mean": None, "stderr": None}
      continue
    err = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    out[name] = {"mean": float(values.mean()), "stderr": err}
  return out


def _cell(stat: Mapping[str, float | None], digits: int = 3) -> str:
  if stat["mean"] is None:
    return "n/a"
  if stat["stderr"] is None:
    return f"{stat['mean']:.{digits}f}"
  return f"{stat['mean']:.{digits}f} ± {stat['stderr']:.{digits}f}"


def markdown(results: Mapping[str, Any]) -> str:
  """The tables of results.json: accuracies and distance, then consistency per layer and A."""
  modes = results["modes"]
  cols = [("clean acc.", "clean_accuracy"), ("white-box acc.", "white_box_accuracy"),
          ("transfer acc.", "transfer_accuracy"),
          ("‖φ(x)−φ(x*)‖²", "representation_distance"), ("relative", "relative_distance")]
  head = lambda names: ["| mode | " + " | ".join(names) + " |",
                        "|" + " --- |" * (len(names) + 1)]
  lines = [f"Dataset {results['dataset']}, {results['num_seeds']} seed(s); attack "
           f"{_describe_attack(results['attack'])}; phi = {results['layer']}.", ""]
  lines += head([c for c, _ in cols])
  for mode, r in modes.items():
    lines.append(f"| {mode} | " + " | ".join(_cell(r["summary"][key]) for _, key in cols) + " |")
  for layer in results["layers"]:
    for sim in results["similarities"]:
      lines += ["", f"Mean consistency, layer {layer}, A = {sim}, top-{results['k']} of "
                f"{results['pool']['num_examples']} {results['pool']['split']} images:", ""]
      lines += head(["real", "adversarial", "union", "live neurons"])
      for mode, r in modes.items():
        s = r["summary"]
        cells = [_cell(s[f"consistency/{layer}/{sim}/{part}"]) for part in SETS]
        cells.append(_cell(s[f"live_neurons/{layer}"], 1))
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _describe_attack(a: Mapping[str, Any]) -> str:
  steps = "" if a["name"] == "fgsm" else f", {a['num_steps']} steps of {a['step_size']:g}"
  start = ", random start" if a["name"] == "pgd" and a["random_start"] else ""
  return f"{a['name']} ({a['loss']}), eps {a['eps']:g}{steps}{start}"


def write_pictures(workdir: str, mode: str, record: Mapping[str, Any], pool, config) -> dict:
  """pictures/<mode>_<layer>.png for one model: its most consistent live neurons on real images
  (under the first similarity), their top picture_k real and adversarial inputs."""
  r = config.report
  count = r.picture_neurons
  if not count:
    return {}
  out, (px, py) = {}, pool
  sim = tuple(r.similarities)[0]
  for layer, res in record["_pool"]["layers"].items():
    real_scores = res["scores"][sim]["real"]
    live = np.flatnonzero(res["real_top"].values[:, -1] > 0)
    chosen = live[np.argsort(-real_scores[live], kind="stable")[:count]]
    if not len(chosen):
      continue
    k = min(r.picture_k, r.k)
    rel = os.path.join("pictures", f"{mode}_{layer}.png")
    io.on_main_process(os.path.join(workdir, rel), lambda p: pictures.save_neuron_pictures(
        p, px, res["real_top"].indices[:, :k], record["_pool"]["adv_images"],
        res["adv_top"].indices[:, :k], chosen, real_labels=py, adv_labels=py,
        scores={name: v for name, v in res["scores"][sim].items()},
        title=f"{mode}, layer {layer}, A = {sim}: top-{k} real | top-{k} adversarial"))
    out[layer] = rel
  return out


def fingerprint(config, steps: Mapping[str, int]) -> str:
  """What the table depends on: the whole config and each mode's checkpoint step."""
  text = json.dumps({"config": json.loads(config.to_json_best_effort()), "steps": dict(steps)},
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def already_done(workdir: str, stamp: str) -> bool:
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      return json.load(f).get("fingerprint") == stamp
  except (OSError, ValueError):
    return False


def build(config, models_by_mode: Mapping[str, tuple[list[nnx.State], int]], ev: Evaluator,
          test, pool, similarities: Mapping[str, np.ndarray], workdir: str) -> dict[str, Any]:
  """results.json's dict (and the pictures) from each mode's seed states and checkpoint step."""
  key = jax.random.key(config.report.seed)
  results = {"dataset": config.data.name, "layer": config.model.layer,
             "num_seeds": int(config.train.get("num_seeds", 1)), "k": config.report.k,
             "attack": config.report.attack.to_dict(), "train_attack": config.attack.to_dict(),
             "lambda_c": float(config.consistent.lambda_c),
             "layers": list(config.report.layers), "similarities": list(similarities),
             "similarity_matrices": {n: np.round(a, 4).tolist() for n, a in similarities.items()},
             "pool": {"split": config.report.split, "num_examples": int(len(pool[1]))},
             "test_examples": int(len(test[1])), "modes": {}, "pictures": {}}
  for mode, (states, step) in models_by_mode.items():
    t0, records = time.time(), []
    for i, state in enumerate(states):
      rec = evaluate_model(ev, state, states[:i] + states[i + 1:], test, pool, similarities, key)
      if i == 0:
        results["pictures"][mode] = write_pictures(workdir, mode, rec, pool, config)
      records.append({"seed": int(config.seed + i), **rec})
    results["modes"][mode] = {"step": int(step), "summary": summarise(records),
                              "seeds": [{k: v for k, v in r.items() if k != "_pool"}
                                        for r in records]}
    s = results["modes"][mode]["summary"]
    logging.info("Report %s (%d seeds, %.1fs): clean %.3f, white-box %.3f, consistency (%s, %s) "
                 "real %.3f adversarial %.3f", mode, len(states), time.time() - t0,
                 s["clean_accuracy"]["mean"], s["white_box_accuracy"]["mean"],
                 results["layers"][0], results["similarities"][0],
                 *(s[f"consistency/{results['layers'][0]}/{results['similarities'][0]}/{p}"]["mean"]
                   or float("nan") for p in ("real", "adversarial")))
  return results


def write(workdir: str, results: Mapping[str, Any]) -> None:
  io.on_main_process(os.path.join(workdir, "results.json"),
                     lambda p: io.atomic_write_json(p, results))
  io.on_main_process(os.path.join(workdir, "results.md"),
                     lambda p: io.atomic_write_text(p, markdown(results)))


def reference_features(ev: Evaluator, state: nnx.State, pool) -> np.ndarray:
  """phi [N, D] of the pool's real images under a reference model (for A = 'features')."""
  return ev.map(lambda a, b, kb: ev.features(state, a)[2], pool, jax.random.key(0))


def similarity_matrices(config, num_classes: int, reference: Callable[[], tuple]) -> dict:
  """{name: A [C, C]} for report.similarities; `reference()` -> (features, labels) is called only
  for 'features'."""
  out = {}
  for kind in config.report.similarities:
    features = labels = None
    if kind == "features":
      features, labels = reference()
    out[kind] = cons.similarity_matrix(kind, num_classes, path=config.report.similarity_path or
                                       None, features=features, labels=labels,
                                       field="report.similarities")
  return out

