"""Formats sessiond-load's JSON results for the benchmark scripts.

  report.py line SECTION ROUND LABEL < result.json >> results.jsonl
      tags one result with its section, round and label, appends it as a
      JSON line and prints a one-line summary to stderr
  report.py table results.jsonl
      per section and target, every round's figures with their ratios to
      "redis alone" of the same section and round
"""
import json
import sys


def depth(result):
    value = result.get("requests_per_read")
    return "-" if value is None else f"{value:.2f}"


def micros(result, key):
    """A per-operation CPU figure, or "-" when the run did not measure it."""
    value = result.get(key)
    return "-" if value is None else f"{value:.2f}"


def together(result):
    """The server's and the load tool's CPU per operation: on a machine
    whose cores they share, the throughput is about the cores over this."""
    return result["server_cpu_us_per_op"] + result["loader_cpu_us_per_op"]


def line(section, round_, label):
    result = json.load(sys.stdin)
    result.update(section=section, round=int(round_), label=label)
    print(json.dumps(result))
    print(
        f"  {label:<32} {result['ops_per_sec']:>9.0f} ops/s  "
        f"p50 {result['p50_us']:>6}  p99 {result['p99_us']:>6}  p99.9 {result['p999_us']:>6} us  "
        f"writes p99 {result.get('write_p99_us') or '-':>6} us  "
        f"server {micros(result, 'server_cpu_us_per_op'):>5} us/op "
        f"(kernel {micros(result, 'server_system_us_per_op'):>5})  "
        f"loader {result['loader_cpu_us_per_op']:>5.2f} us/op  "
        f"req/read {depth(result)}  errors {result['errors']}",
        file=sys.stderr,
    )


def table(path):
    rows = [json.loads(text) for text in open(path)]
    for section in dict.fromkeys(row["section"] for row in rows):
        print(
            f"\n{section}: per round, ops/s, p50/p99/p99.9 us, the writes' p99, server CPU us/op "
            "(its kernel part), requests per server read; (ratio to Redis alone in the same round)"
        )
        mine = [row for row in rows if row["section"] == section]
        for label in dict.fromkeys(row["label"] for row in mine):
            cells = []
            for row in (row for row in mine if row["label"] == label):
                base = next(
                    b for b in mine if b["round"] == row["round"] and b["label"] == "redis alone"
                )
                cells.append(
                    f"{row['ops_per_sec']:>7.0f} ({row['ops_per_sec'] / base['ops_per_sec']:.2f}x) "
                    f"{row['p50_us']}/{row['p99_us']}/{row['p999_us']} "
                    f"({row['p99_us'] / base['p99_us']:.2f}x) "
                    f"writes {row.get('write_p99_us') or '-'} "
                    f"cpu {row['server_cpu_us_per_op']:.2f} "
                    f"({row['server_cpu_us_per_op'] / base['server_cpu_us_per_op']:.2f}x; "
                    f"kernel {micros(row, 'server_system_us_per_op')}) "
                    f"with loader {together(row):.2f} ({together(row) / together(base):.2f}x) "
                    f"depth {depth(row)}"
                    + (f" errors {row['errors']}" if row["errors"] else "")
                )
            print(f"  {label:<24} " + " | ".join(cells))


if __name__ == "__main__":
    if sys.argv[1] == "line":
        line(*sys.argv[2:5])
    else:
        table(sys.argv[2])
