r"""The data-efficiency comparison from a clone; see docs/data_efficiency.md.

  python tools/data_efficiency.py \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --gin.DATASET="'cqa'" --output_dir=/tmp/data_efficiency

The same as the installed `dsbs-data-efficiency`.
"""

from dsbs_tasks import data_efficiency

if __name__ == '__main__':
  data_efficiency.main()
