"""Check a cut manifest before training: readable audio at the right rate, non-empty transcripts.

    asrkit validate --cuts data/manifests/synth-en_cuts_train.jsonl.gz

Prints one line per problem and exits 1 if there is any.
"""

from asrkit.data.features import SAMPLE_RATE, check_audio, load_cuts


def add_args(p):
    p.add_argument("--cuts", nargs="+", required=True)
    p.add_argument("--sample-rate", type=int, default=SAMPLE_RATE)


def run(args):
    problems = 0
    for path in args.cuts:
        cuts = load_cuts(path).to_eager()
        bad = check_audio(cuts, args.sample_rate)
        bad += [(c.id, "empty transcript") for c in cuts
                if not any((s.text or "").strip() for s in c.supervisions)]
        for cut_id, why in bad:
            print(f"{path}: {cut_id}: {why}")
        print(f"{path}: {len(cuts)} cuts, {len(bad)} problem(s)")
        problems += len(bad)
    return 1 if problems else 0
