"""Explain a checkpoint's predictions with hand-written Grad-CAM, beside occlusion or integrated gradients.

Examples:
    python gradcam.py --ckpt runs/best.pt                           # test split: overlays + error analysis
    python gradcam.py --ckpt runs/best.pt --num 10 --method integrated-gradients
    python gradcam.py --ckpt runs/best.pt --image photo.jpg --target-class gatto
    python gradcam.py --ckpt runs/best.pt --layer layer3            # another target layer
    python gradcam.py --ckpt runs/best.pt --layer list              # the layers to choose from, with their sizes
    python gradcam.py --ckpt runs/best.pt --faithfulness 50         # deletion/insertion AUC of every method
    python gradcam.py --ckpt runs/best.pt --sanity 8                # model- and data-randomisation checks
    python gradcam.py --ckpt runs/best.pt --compare-layer default   # Grad-CAM on a finer layer beside it

On the test split it explains the most confidently misclassified images (at least 3 when there are
that many) and some correct ones, and writes into <checkpoint folder>/gradcam/: gradcam_grid.png
(image, Grad-CAM overlay, second method overlay; true / predicted / confidence) and
error_analysis.md (top-3 probabilities and what the heatmap attends to for every misclassified image
shown, and the most confused class pairs of the whole test split). With --faithfulness N it also scores
Grad-CAM, integrated gradients, occlusion and a random order by deletion and insertion AUC on N seeded test
images (faithfulness.json, and a section of error_analysis.md); with --sanity N, the sanity checks of
Adebayo et al. (2018) on N seeded test images: cascading model randomisation, and data randomisation by a head
refitted to shuffled labels of 1,000 training images (sanity.json, and two sections). With --compare-layer,
Grad-CAM on a second layer gets a column of the grid, and layers.json and a section compare the two layers' maps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.architectures import ARCHS
from common.cli import ArgumentParser, DataError, UserError, nonnegative_int, positive_int, run_main
from common.compression import require_float
from common.data import display_name
from common.decode import decode_image
from common.engine import inference_batch_size, resolve_device
from common.explain import (
    DEFAULT_LAYER,
    IG_STEPS,
    GradCAM,
    completeness_gap,
    describe_heatmap,
    find_layer,
    integrated_gradients,
    layer_sizes,
    occlusion,
    overlay,
)
from common.faithfulness import deletion_insertion, faithfulness
from common.files import atomic_write_text
from common.inference import LabelledImages, Predictor, center_crop, load_test_split
from common.markdown import markdown_table
from common.metrics import confusion
from common.plots import plot_image_grid
from common.runs import load_checkpoint, write_json
from common.sanity import (
    HEAD_IMAGES,
    STILL_SIMILAR,
    cascading_randomization,
    data_randomization,
    flagged,
    head_inputs,
    rank_correlation,
    reference_maps,
)


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Grad-CAM explanations and error analysis.")
    parser.add_argument("--ckpt", default="runs/best.pt", help="checkpoint to explain")
    parser.add_argument("--image", default=None, help="explain this one image instead of the test split")
    parser.add_argument("--target-class", default=None,
                        help="class to explain (folder or English name; default: predicted)")
    parser.add_argument("--layer", default=None,
                        help="target layer: any module name of the model, 'list' to print them with their output "
                             "sizes (default: the architecture's last conv block)")
    parser.add_argument("--compare-layer", default=None, metavar="LAYER",
                        help="also draw Grad-CAM on this layer and compare the two layers' maps (rank correlation, "
                             "deletion and insertion AUC); 'default': the architecture's finer map, e.g. layer3")
    parser.add_argument("--method", choices=("occlusion", "integrated-gradients", "none"), default="occlusion",
                        help="second explanation shown beside Grad-CAM")
    parser.add_argument("--ig-steps", type=positive_int, default=IG_STEPS,
                        help="path steps of integrated gradients (each map's completeness gap is reported)")
    parser.add_argument("--faithfulness", type=nonnegative_int, default=0, metavar="N",
                        help="also score every method's faithfulness (deletion and insertion AUC) on N test "
                             "images drawn with a fixed seed (0: off)")
    parser.add_argument("--sanity", type=nonnegative_int, default=0, metavar="N",
                        help="also run the cascading model-randomisation sanity check on N seeded test images "
                             "(0: off)")
    parser.add_argument("--num", type=int, default=8, help="test images to explain (at least 5)")
    parser.add_argument("--min-errors", type=int, default=3, help="misclassified images among them, when available")
    parser.add_argument("--out-dir", default=None, help="default: <checkpoint folder>/gradcam")
    parser.add_argument("--source-dir", default=None, help="folder the saved split was drawn from")
    parser.add_argument("--split-file", default=None, help="saved split (default: the run's)")
    parser.add_argument("--workers", type=positive_int, default=2,
                        help="decoding threads, when the test split's pixel cache must first be built")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def class_index(name: str, classes: list[str]) -> int:
    """Index of a class given by folder name or English display name."""
    for i, c in enumerate(classes):
        if name in (c, display_name(c)):
            return i
    raise DataError(f"--target-class {name!r} is not one of {', '.join(classes)}")


def second_map(method: str, model, x: torch.Tensor, target: torch.Tensor,
               ig_steps: int = IG_STEPS) -> tuple[np.ndarray | None, list[str]]:
    """N x H x W maps of the second method, scaled to [0, 1] for display, and a note per map (for integrated
    gradients, its completeness gap: how far the attributions' sum is from f(x) - f(baseline))."""
    if method == "none":
        return None, []
    notes = [""] * len(x)
    if method == "occlusion":
        maps = occlusion(model, x, target).clamp_min(0)
    else:
        attributions = integrated_gradients(model, x, target, steps=ig_steps)
        gaps = completeness_gap(model, x, target, attributions)
        notes = [f"completeness gap {g:.1%}" for g in gaps.tolist()]
        print(f"integrated gradients, {ig_steps} steps: completeness gap mean {gaps.mean():.1%}, "
              f"max {gaps.max():.1%}")
        maps = attributions.abs().sum(1)
    maps = maps.cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0), notes


def gradcam_maps(model, layer, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """N x H x W Grad-CAM maps in [0, 1] on one layer, for the target classes."""
    with GradCAM(model, layer) as cam:
        return cam(x, target)[0].cpu().numpy()


def seeded_sample(idx: np.ndarray, n: int) -> np.ndarray:
    """n of the test indices, the same for every run on the split (seed 0), in cache order."""
    return np.sort(np.random.default_rng(0).choice(idx, min(n, len(idx)), replace=False))


def sanity_section(predictor: Predictor, layer_name: str, test: LabelledImages, n: int, ig_steps: int,
                   out: Path) -> list[str]:
    """Both randomisation tests on n seeded test images; write sanity.json and return the Markdown sections."""
    spec = ARCHS[predictor.ckpt["arch"]]
    x = predictor.prepare(test.images[seeded_sample(test.indices, n)])
    with torch.no_grad():
        target = predictor.model(x).argmax(1)
    ig_steps = min(ig_steps, 32)  # a rank correlation needs the map's order, not a small completeness gap
    reference = reference_maps(predictor.model, layer_name, x, target, ig_steps)
    rows = cascading_randomization(predictor.model, spec.blocks, layer_name, x, target, ig_steps,
                                   reference=reference)
    train, step = seeded_sample(test.split.indices["train"], HEAD_IMAGES), inference_batch_size(predictor.device)
    features = head_inputs(predictor.model, spec.head_child,
                           (predictor.prepare(test.images[train[i:i + step]]) for i in range(0, len(train), step)))
    data = data_randomization(predictor.model, spec.head_child, layer_name, x, target, features,
                              torch.as_tensor(test.labels[train]), ig_steps, reference=reference)
    data["head_only"] = spec.modes.get(predictor.ckpt["mode"]) == (spec.head_child,)
    weak = flagged(rows)
    write_json(out / "sanity.json", {"n": len(x), "requested": n, "seed": 0, "ig_steps": ig_steps,
                                     "cascade": rows, "flagged": weak, "threshold": STILL_SIMILAR,
                                     "data_randomization": data})
    print(f"sanity check on {len(x)} test images: cascade " + (f"flags {', '.join(weak)}" if weak else "flags nothing")
          + f"; shuffled-label head (fits {data['fit_acc']:.1%} of its labels) "
          + (f"flags {', '.join(data['flagged'])}" if data["flagged"] else "flags nothing"))
    methods = [k for k in rows[0] if k != "randomized"]
    return ["## Sanity check: cascading model randomisation\n",
            f"The weights are re-initialised from the head down, one block at a time (cumulatively), and each "
            f"method's map on {len(x)} test images compared with the trained model's by Spearman rank correlation "
            f"(mean ± std). Maps of a method that explains the model should change; at {STILL_SIMILAR} or more "
            "with every weight random, a method is flagged.\n",
            markdown_table(["randomised up to", *methods],
                           [[r["randomized"], *(f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in methods)]
                            for r in rows], "l" + "r" * len(methods)), "",
            (f"Flagged: {', '.join(weak)}." if weak else "No method flagged.") + "\n",
            *data_randomization_section(data, spec.head_child, len(predictor.classes))]


def data_randomization_section(data: dict, head: str, classes: int) -> list[str]:
    """The Markdown section of the shuffled-label head test."""
    scope = ("This run trained its head alone, so the copy is a model that learnt nothing true from these labels."
             if data["head_only"] else "This run also trained layers below its head; they keep their trained "
             "weights, so the test covers the head only.")
    return ["## Sanity check: data randomisation\n",
            f"A copy's head (`{head}`) is re-initialised and fitted for {data['epochs']} epochs to the features of "
            f"{data['train_images']} training images with their labels shuffled; it fits {data['fit_acc']:.1%} of "
            f"them (chance: {1 / classes:.0%}). {scope} Each method's map on the same test images, for the same "
            "classes, is compared with the trained model's (Spearman rank correlation, mean ± std).\n",
            markdown_table(["method", "rank correlation"],
                           [[k, f"{v['mean']:.3f} ± {v['std']:.3f}"] for k, v in data["methods"].items()], "lr"), "",
            (f"Flagged: {', '.join(data['flagged'])}." if data["flagged"] else "No method flagged.") + "\n"]


def layer_comparison(model, x: torch.Tensor, target: torch.Tensor, layers: dict[str, np.ndarray],
                     out: Path) -> list[str]:
    """Two layers' Grad-CAM maps of the explained images side by side in numbers: their rank correlation and each
    one's deletion and insertion AUC; write layers.json and return the Markdown section."""
    (first, a), (second, b) = layers.items()
    corr = rank_correlation(torch.from_numpy(a), torch.from_numpy(b))
    sizes = dict(layer_sizes(model, x[:1]))
    scores = {}
    for name, maps in layers.items():
        deletion, insertion = deletion_insertion(model, x, target, torch.from_numpy(maps).to(x.device))
        scores[name] = {"size": list(sizes[name][1:]), "deletion_mean": float(deletion.mean()),
                        "insertion_mean": float(insertion.mean())}
    write_json(out / "layers.json", {"n": len(x), "layers": [first, second], "scores": scores,
                                     "rank_correlation": {"mean": float(corr.mean()), "std": float(corr.std())}})
    print(f"Grad-CAM on {first} against {second}: rank correlation {corr.mean():.3f} over {len(x)} images")
    return ["## Grad-CAM on two layers\n",
            f"The explained images' Grad-CAM maps on `{first}` and on `{second}` (for the same classes): Spearman "
            f"rank correlation {corr.mean():.3f} ± {corr.std():.3f}. Deletion and insertion AUC of each layer's "
            "maps, as in the faithfulness section (lower deletion, higher insertion: more faithful):\n",
            markdown_table(["layer", "map size", "deletion AUC", "insertion AUC"],
                           [[f"`{k}`", " x ".join(map(str, v["size"])), f"{v['deletion_mean']:.3f}",
                             f"{v['insertion_mean']:.3f}"] for k, v in scores.items()], "llrr"), ""]


def faithfulness_section(predictor: Predictor, layer, images, idx: np.ndarray, n: int, ig_steps: int,
                         out: Path) -> list[str]:
    """Score each method on n seeded test images; write faithfulness.json and return the Markdown section."""
    picks = seeded_sample(idx, n)
    model = predictor.model

    def batches():
        for start in range(0, len(picks), 8):
            x = predictor.prepare(images[picks[start:start + 8]])
            with torch.no_grad():
                yield x, model(x).argmax(1)

    scores = faithfulness(model, layer, batches(), ig_steps)
    write_json(out / "faithfulness.json", {"n": len(picks), "requested": n, "seed": 0, "ig_steps": ig_steps,
                                           "methods": scores})
    best_del = min(scores, key=lambda k: scores[k]["deletion_mean"])
    best_ins = max(scores, key=lambda k: scores[k]["insertion_mean"])
    print(f"faithfulness on {len(picks)} test images: lowest deletion AUC {best_del}, highest insertion AUC {best_ins}")
    return ["## Faithfulness\n",
            f"Deletion and insertion AUC of each method's map for the predicted class, over {len(picks)} test "
            "images drawn with seed 0 (mean ± sample std). Deletion sets the most important pixels to the mean "
            "first (lower is more faithful); insertion puts them back into a blurred copy first (higher is more "
            "faithful). A method no better than the random order does not show what the model uses.\n",
            markdown_table(["method", "deletion AUC", "insertion AUC"],
                           [[k, f"{v['deletion_mean']:.3f} ± {v['deletion_std']:.3f}",
                             f"{v['insertion_mean']:.3f} ± {v['insertion_std']:.3f}"] for k, v in scores.items()],
                           "lrr"), "",
            f"Lowest deletion AUC: {best_del}; highest insertion AUC: {best_ins}.\n"]


def main(args) -> None:
    if args.num < 5 and not args.image:
        raise UserError("--num must be at least 5")
    if (args.faithfulness or args.sanity) and args.image:
        raise UserError("--faithfulness and --sanity score test images; leave out --image")
    if args.image and not Path(args.image).is_file():  # before the slow model load
        raise DataError(f"--image {args.image}: no such file; pass a JPEG or PNG file")
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.ckpt)
    require_float(ckpt, "Grad-CAM")
    predictor = Predictor(ckpt, device)
    model, classes, names = predictor.model, predictor.classes, predictor.names
    if args.layer == "list":
        x = torch.zeros(1, 3, ckpt["crop_size"], ckpt["crop_size"], device=device)
        for name, size in layer_sizes(model, x):
            print(f"{name:40s} {' x '.join(map(str, size))}")
        return
    layer_name = args.layer or DEFAULT_LAYER[ckpt["arch"]]
    compare_name = ARCHS[ckpt["arch"]].compare_layer if args.compare_layer == "default" else args.compare_layer
    try:
        layer = find_layer(model, layer_name)
        if compare_name:
            find_layer(model, compare_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    if compare_name == layer_name:
        raise UserError(f"--compare-layer {compare_name} is the Grad-CAM layer itself; name another layer")
    crop = ckpt["crop_size"]
    out = Path(args.out_dir) if args.out_dir else Path(args.ckpt).parent / "gradcam"

    if args.image:
        img = decode_image(Path(args.image), ckpt["img_size"])
        if img is None:
            raise DataError(f"{args.image} cannot be read as an image; pass a JPEG or PNG file")
        pixels, labels, chosen, errors_idx, descr = img[None], np.array([-1]), np.array([0]), set(), args.image
        cm_pairs, path_of = [], {}
    else:
        test = load_test_split(ckpt, args.source_dir, args.split_file, args.workers)
        images, labels, idx, descr = test.images, test.labels, test.indices, test.description
        path_of = dict(zip(idx.tolist(), test.names))
        logits, _, _ = predictor.predict(images, labels, idx, desc="eval")
        pred = logits.argmax(1).numpy()
        truth = labels[idx]
        conf = logits.softmax(1).max(1).values.numpy()
        wrong = np.flatnonzero(pred != truth)
        wrong = wrong[np.argsort(-conf[wrong])]
        right = np.flatnonzero(pred == truth)
        n_err = min(len(wrong), max(args.min_errors, args.num // 2))
        picks = list(wrong[:n_err]) + list(right[np.linspace(0, len(right) - 1, args.num - n_err).astype(int)]
                                           if len(right) else [])
        chosen = idx[np.array(picks[:args.num])]
        pixels, errors_idx = images, set(idx[wrong[:n_err]].tolist())
        cm = confusion(truth, pred, len(classes))
        cm_pairs = sorted(((cm[i, j] + cm[j, i], i, j) for i in range(len(classes)) for j in range(i + 1, len(classes))
                           if cm[i, j] + cm[j, i]), reverse=True)[:5]
        print(f"test split: {len(wrong)} of {len(idx)} misclassified; explaining {len(chosen)} images "
              f"({n_err} misclassified)")

    x = predictor.prepare(pixels[chosen])
    with torch.no_grad():
        pred_logits = model(x)
    target = pred_logits.argmax(1)
    if args.target_class:
        target = torch.full_like(target, class_index(args.target_class, classes))
    columns = {f"Grad-CAM ({name})": (gradcam_maps(model, find_layer(model, name), x, target), [""] * len(x))
               for name in filter(None, (layer_name, compare_name))}
    probs = pred_logits.softmax(1).cpu().numpy()
    other, notes = second_map(args.method, model, x, target, args.ig_steps)
    if other is not None:
        columns[args.method] = (other, notes)

    tiles, captions, report = [], [], []
    for k, i in enumerate(chosen):
        raw = center_crop(np.asarray(pixels[i]), crop)
        p = int(probs[k].argmax())
        truth_name = names[labels[i]] if labels[i] >= 0 else "?"
        explained = names[int(target[k])]
        tiles.append(raw)
        captions.append(f"true {truth_name} / pred {names[p]} ({probs[k, p]:.2f})")
        described = []
        for title, (maps, note) in columns.items():
            tiles.append(overlay(raw, maps[k]))
            captions.append(f"{title} for {explained}" + (f"\n({note[k]})" if note[k] else ""))
            described.append(f"- {title} for {explained}: {describe_heatmap(maps[k])}"
                             + (f" ({note[k]})" if note[k] else "") + "\n")
        if i in errors_idx or args.image:
            top3 = np.argsort(-probs[k])[:3]
            report.append(f"### {args.image or path_of[i]}\n\n- true: {truth_name}; predicted: {names[p]}\n"
                          "- top-3: " + ", ".join(f"{names[t]} {probs[k, t]:.3f}" for t in top3) + "\n"
                          + "".join(described))
    plot_image_grid(tiles, captions, out / "gradcam_grid.png",
                    f"{ckpt['arch']}/{ckpt['mode']} on {descr}", cols=1 + len(columns))
    md = [f"# Error analysis: {ckpt['arch']}/{ckpt['mode']}\n", f"Checkpoint `{args.ckpt}`, data: {descr}.\n",
          "Heatmap descriptions are measured from the maps (peak position, share of pixels above half the peak, "
          "share of heat in the central quarter), not judged by eye.\n"]
    if cm_pairs:
        md += ["## Most confused class pairs (whole test split)\n",
               markdown_table(["pair", "errors (both directions)"],
                              [[f"{names[i]} / {names[j]}", n] for n, i, j in cm_pairs], "lr"), ""]
    md.append("## Explained images\n" if args.image else "## Misclassified images\n")
    md += report or ["No misclassified images in the test split.\n"]
    if compare_name:
        md += layer_comparison(model, x, target, {n: columns[f"Grad-CAM ({n})"][0] for n in (layer_name, compare_name)},
                               out)
    if args.faithfulness:
        md += faithfulness_section(predictor, layer, images, idx, args.faithfulness, args.ig_steps, out)
    if args.sanity:
        md += sanity_section(predictor, layer_name, test, args.sanity, args.ig_steps, out)
    atomic_write_text(out / "error_analysis.md", "\n".join(md) + "\n")
    print(f"wrote {out / 'gradcam_grid.png'} and {out / 'error_analysis.md'}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
