"""A stand-in for a training script: reads its params, prints one line per
epoch, reports progress and writes a result, the way a real one would talk to
cyberwave-cloud-node (see README.md, "Workloads")."""

import argparse
import json
import math
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params-file", default=os.environ.get("CYBERWAVE_PARAMS_FILE"))
    args = parser.parse_args()
    params = json.load(open(args.params_file)) if args.params_file else {}
    epochs = params.get("epochs", 3)
    lr = params.get("lr", 0.1)
    seconds = params.get("seconds_per_epoch", 0.2)
    if not isinstance(epochs, int) or epochs < 1:
        print(f"params.epochs must be a positive integer, got {epochs!r}", file=sys.stderr)
        return 2
    if params.get("fail"):
        print("failing on purpose (params.fail)", file=sys.stderr)
        return 3

    progress_path = os.environ.get("CYBERWAVE_PROGRESS_FILE")
    loss = 1.0
    for epoch in range(1, epochs + 1):
        time.sleep(seconds)
        loss *= math.exp(-lr * 3)
        print(f"epoch {epoch}/{epochs} loss={loss:.4f}", flush=True)
        if progress_path:
            with open(progress_path, "a") as progress:
                progress.write(json.dumps({"step": epoch, "total": epochs, "loss": round(loss, 4)}) + "\n")

    result_path = os.environ.get("CYBERWAVE_RESULT_FILE")
    if result_path:
        with open(result_path, "w") as result:
            json.dump({"epochs": epochs, "final_loss": round(loss, 4), "lr": lr}, result)
    print("training done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
