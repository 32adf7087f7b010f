#!/usr/bin/env bash
# Make the offline default dataset (Fashion-MNIST) available from Debian's dataset-fashion-mnist.
# Never fails the build: without the data, `normbench run` says how to get it.
set -u
dir=/usr/share/datasets/fashion-mnist
have() { [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; }

if have; then
  echo "data: Fashion-MNIST found in $dir"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    echo "data: installing Debian's dataset-fashion-mnist"
    $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }
  fi
fi
if have; then
  echo "data: Fashion-MNIST installed in $dir"
else
  echo "data: Fashion-MNIST is not available offline here. Install Debian's package" \
       "(sudo apt-get install dataset-fashion-mnist), or put the four idx files in" \
       "DATA_DIR/FashionMNIST/raw/ and pass --data-dir DATA_DIR (or set NORMBENCH_DATA)." >&2
fi
exit 0
