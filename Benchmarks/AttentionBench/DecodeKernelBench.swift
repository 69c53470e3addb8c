import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// The two halves of a decode step in isolation, on one thread: the scores `q_r · k_j` and the
/// output update `o_r += Σ_j p_r[j] v_j`, for R query rows (a GQA group) against `keys` stored
/// rows of width d, in the 512-key tiles decoding uses, per storage type. A row reports the
/// stored bytes read per second and the GFLOP/s (2·R·keys·d): with few rows the kernels should
/// run at memory speed, with many at the vector units' speed. This is where a kernel change is
/// judged before the whole decode step.
func benchDecodeKernels(types: [KVCacheType], groups: [Int] = [1, 2, 3, 4, 8, 16, 32], keys: Int = 131072,
                        d: Int = 128) throws -> [Row] {
    var rows = [Row]()
    let tile = 512
    for type in types {
        let kind = type.kernelKind, rowBytes = type.rowBytes(d)
        // One operand of `keys` rows, stored once: 64 MiB in float32, beyond any cache.
        let source = try Tensor.randomUniform([keys, d], seed: 7)
        let stored = UnsafeMutableRawPointer.allocate(byteCount: keys * rowBytes, alignment: 64)
        defer { stored.deallocate() }
        source.withUnsafePointer { ak_kv_encode_rows(kind, $0, d, keys, d, stored, rowBytes) }
        for R in groups {
            let q = try Tensor.randomUniform([R, d], seed: 8).scalars
            var s = [Float](repeating: 0, count: R * tile)
            var p = try Tensor.randomUniform([R, tile], seed: 9).scalars.map { abs($0) / Float(tile) }
            var o = [Float](repeating: 0, count: R * d)
            let dot = measure(minRuns: 5, budget: 0.4) {
                for j0 in stride(from: 0, to: keys, by: tile) {
                    ak_kv_rows_dot_keys(kind, q, d, R, d, stored + j0 * rowBytes, rowBytes, min(tile, keys - j0), &s, tile)
                }
            }
            let pv = measure(minRuns: 5, budget: 0.4) {
                for j0 in stride(from: 0, to: keys, by: tile) {
                    ak_kv_rows_times_values(kind, &p, tile, R, stored + j0 * rowBytes, rowBytes, min(tile, keys - j0), d, &o, d)
                }
            }
            for (impl, t) in [("dot", dot), ("pv", pv)] {
                let bytes = Double(keys * rowBytes), flops = 2.0 * Double(R * keys * d)
                var row = Row(variant: "decode-kernel", impl: impl, B: 1, H: R, Hkv: 1, N: 1, M: keys, d: d, causal: false,
                              threads: 1, seconds: t.median, gflops: flops / t.median * 1e-9, peakFraction: nil,
                              workspaceBytes: 0, relError: nil, runs: t.runs, minSeconds: t.min,
                              note: String(format: "%@, %d rows, %.1f GB/s of stored rows, path %@", type.rawValue, R,
                                           bytes / t.median * 1e-9, KVCacheType.kernelPath))
                row.bytesPerSecond = bytes / t.median
                row.kvType = type.rawValue
                rows.append(row)
            }
            _ = (s, o)
        }
    }
    return rows
}

/// The kernel rows as a table: GB/s and GFLOP/s per storage type and group size.
func decodeKernelTable(_ rows: [Row]) -> String {
    let kernel = rows.filter { $0.variant == "decode-kernel" }
    guard !kernel.isEmpty else { return "" }
    var s = "| type | rows (group) | dot: GB/s | dot: GFLOP/s | P·V: GB/s | P·V: GFLOP/s |\n|---|---|---|---|---|---|\n"
    var seen = Set<String>()
    for r in kernel where seen.insert("\(r.kvType ?? "")/\(r.H)").inserted {
        let dot = kernel.first { $0.impl == "dot" && $0.kvType == r.kvType && $0.H == r.H }
        let pv = kernel.first { $0.impl == "pv" && $0.kvType == r.kvType && $0.H == r.H }
        func f(_ x: Row?, _ gb: Bool) -> String {
            guard let x else { return "–" }
            return gb ? String(format: "%.1f", (x.bytesPerSecond ?? 0) * 1e-9) : String(format: "%.1f", x.gflops)
        }
        s += "| \(r.kvType ?? "f32") | \(r.H) | \(f(dot, true)) | \(f(dot, false)) | \(f(pv, true)) | \(f(pv, false)) |\n"
    }
    return s
}
