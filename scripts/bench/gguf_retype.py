#!/usr/bin/env python3
"""A GGUF re-written with every 2-D tensor stored as F32, BF16 or Q8_0 (1-D tensors F32), metadata
copied: llama.cpp's input at the precision that `temper --dtype f32|bf16|q8_0` computes in.

Usage: gguf_retype.py SRC.gguf DST.gguf f32|bf16|q8_0   (needs the `gguf` package and numpy)
"""
import sys

import gguf
import numpy as np
from gguf.quants import dequantize, quantize

src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
qtype = {
    "f32": gguf.GGMLQuantizationType.F32,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}[kind]
reader = gguf.GGUFReader(src)
writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
for field in reader.fields.values():
    # The writer adds the architecture and the GGUF header fields itself; the file type changes.
    if field.name in ("general.architecture", "general.file_type") or field.name.startswith("GGUF."):
        continue
    vtype = field.types[0]
    sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
for t in reader.tensors:
    data = dequantize(t.data, t.tensor_type).astype(np.float32)
    data = data.reshape(tuple(int(x) for x in reversed(t.shape.tolist())))
    if data.ndim >= 2 and qtype != gguf.GGMLQuantizationType.F32:
        writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(t.name, data)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
