"""A stand-in for an inference script: takes the params as one JSON argument
({body}) and writes a result."""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}")
    params = json.loads(parser.parse_args().params)
    text = str(params.get("input", ""))
    answer = {"input": text, "output": text[::-1], "length": len(text)}
    print(json.dumps(answer))
    result_path = os.environ.get("CYBERWAVE_RESULT_FILE")
    if result_path:
        with open(result_path, "w") as result:
            json.dump(answer, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
