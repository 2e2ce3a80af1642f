"""`hhh eval rm-compare A B`: two reward models' `hhh eval rm` results on the same items, compared pairwise.

Two accuracies with overlapping intervals can still differ reliably: both judges saw the same items, so the
question is whether one is right where the other is wrong more often than chance. Per item, correct is the same
rule as `hhh eval rm` (the preferred response's reward strictly highest). Reported per subset and pooled:
each judge's accuracy, the difference A - B with a 95% bootstrap interval over items (both judges resampled
together), and the exact McNemar test on the items where exactly one judge is right.

Items are matched by id; the comparison uses the items both results hold, and says how many each has alone.
"""

from __future__ import annotations

import pathlib

import numpy as np

from hhh import stats
from hhh.safeio import read_json, write_json_atomic

# A results.json holds every item's rewards: tens of MB for a full RewardBench run.
MAX_RESULTS_BYTES = 1 << 30


def load(path) -> dict:
  """A results.json (or the directory holding one) of `hhh eval rm`, checked for the fields compared here."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "results.json"
  rec = read_json(path, MAX_RESULTS_BYTES)
  items = rec.get("items")
  if not isinstance(rec.get("suite"), str) or not isinstance(items, list):
    raise ValueError(f"{path}: not an `hhh eval rm` results.json (no suite or items)")
  for i, it in enumerate(items):
    ok = (isinstance(it, dict) and isinstance(it.get("id"), str) and isinstance(it.get("subset"), str)
          and isinstance(it.get("labels"), list) and isinstance(it.get("rewards"), list)
          and len(it["labels"]) == len(it["rewards"]) >= 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in it["rewards"])
          and set(it["labels"]) <= {0, 1} and 0 < sum(it["labels"]) < len(it["labels"]))
    if not ok:
      raise ValueError(f"{path}: item {i} is not an id, subset, labels (0/1, some of each) and one reward each")
  rec["path"] = str(path)
  return rec


def correct(item: dict) -> bool:
  r, lab = np.asarray(item["rewards"], np.float64), np.asarray(item["labels"], bool)
  return bool(r[lab].max() > r[~lab].max())


def compare(a: dict, b: dict, *, n_boot: int = 2000, seed: int = 0) -> dict:
  """A - B on the items both hold: per subset and "all", each judge's accuracy, the paired difference with its
  95% interval and p, and McNemar's b01 (A wrong, B right), b10 and exact p."""
  if a["suite"] != b["suite"]:
    raise ValueError(f"{a['path']} is suite {a['suite']!r} and {b['path']} is {b['suite']!r}: nothing to pair")
  by_id = {it["id"]: it for it in b["items"]}
  if len(by_id) != len(b["items"]) or len({it["id"] for it in a["items"]}) != len(a["items"]):
    raise ValueError("an item id repeats within one results file: items cannot be paired")
  pairs = [(it, by_id[it["id"]]) for it in a["items"] if it["id"] in by_id]
  if not pairs:
    raise ValueError(f"{a['path']} and {b['path']} share no item id")
  for x, y in pairs:
    if x["labels"] != y["labels"]:
      raise ValueError(f"item {x['id']}: the two results disagree on which response is preferred")
  groups = {"all": pairs}
  for x, y in pairs:
    groups.setdefault(x["subset"], []).append((x, y))
  out = {}
  for name, grp in groups.items():
    ca = np.asarray([correct(x) for x, _ in grp])
    cb = np.asarray([correct(y) for _, y in grp])
    diff = stats.paired_difference(ca[:, None].astype(float), cb[:, None].astype(float), n_boot=n_boot, seed=seed)
    out[name] = {"n": len(grp), "a": float(ca.mean()), "b": float(cb.mean()),
                 "diff": {k: diff[k] for k in ("mean", "lo", "hi", "p_two_sided")}, "mcnemar": stats.mcnemar(ca, cb)}
  return {"suite": a["suite"], "a": {"path": a["path"], "model": a.get("model")},
          "b": {"path": b["path"], "model": b.get("model")}, "n_common": len(pairs),
          "only_a": len(a["items"]) - len(pairs), "only_b": len(b["items"]) - len(pairs), "groups": out}


def lines(rec: dict) -> list[str]:
  out = [f"A = {rec['a']['model']} ({rec['a']['path']})", f"B = {rec['b']['model']} ({rec['b']['path']})",
         f"{rec['suite']}: {rec['n_common']} items in both"
         + (f" ({rec['only_a']} only in A, {rec['only_b']} only in B, left out)"
            if rec["only_a"] or rec["only_b"] else "")]
  for name, g in rec["groups"].items():
    d, m = g["diff"], g["mcnemar"]
    out.append(f"{name:<28} n={g['n']:<5} A {g['a']:.3f}  B {g['b']:.3f}  A-B {d['mean']:+.3f} "
               f"[{d['lo']:+.3f}, {d['hi']:+.3f}]  McNemar A-only {m['b10']} B-only {m['b01']} p={m['p']:.3g}")
  return out


def cli(args) -> None:
  rec = compare(load(args.a), load(args.b), seed=args.seed)
  for line in lines(rec):
    print(line)
  if args.out:
    write_json_atomic(args.out, rec)
    print(f"hhh: wrote {args.out}")


def add_cli(sub) -> None:
  p = sub.add_parser("rm-compare", help="two `hhh eval rm` results on the same items: paired difference, McNemar")
  p.add_argument("a", help="results.json of `hhh eval rm` (or its --out directory)")
  p.add_argument("b", help="the other judge's results.json (or directory), same suite")
  p.add_argument("--out", default=None, help="also write the comparison as JSON here")
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  p.set_defaults(func=cli)
