"""Summarise `ncu --csv --metrics gpu__time_duration.sum` output: one line per kernel in launch order,
then the total. Usage: python benchmarks/ncu_summary.py NCU.csv"""

import csv
import sys

rows = [r for r in csv.DictReader(line for line in open(sys.argv[1]) if line.startswith('"'))]
total = 0.0
for r in rows:
    us = float(r["Metric Value"].replace(",", "")) / 1e3  # ns -> us
    total += us
    print(f"{us:8.2f} us  {r['Kernel Name'][:90]}  grid={r.get('Grid Size', '')} block={r.get('Block Size', '')}")
print(f"{total:8.2f} us  total over {len(rows)} kernels")
