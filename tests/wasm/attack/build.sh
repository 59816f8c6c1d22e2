#!/bin/sh
# Builds the attack plugins with the flags of tests/wasm/build.sh.
set -eu
cd "$(dirname "$0")"
for f in ${*:-*.c}; do
  f=${f%.c}
  clang --target=wasm32 -mcpu=mvp -O2 -ffreestanding -nostdlib -fvisibility=hidden \
    -Wall -Wextra -Wl,--no-entry -Wl,--strip-debug -Wl,--stack-first \
    -Wl,-z,stack-size=65536 -o "$f.wasm" "$f.c"
  echo "built $f.wasm"
done
