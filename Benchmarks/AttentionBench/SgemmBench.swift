import AttentionTensor
import COpenBLAS

/// sgemm GFLOP/s at n³ for raw `cblas_sgemm` and the tensor layer's `matmul`, with OpenBLAS's own
/// threads (1 and `threads`). Returns the rows; the peak is the best raw figure at `threads`.
func benchSgemm(sizes: [Int], threads: Int) throws -> [Row] {
    var rows = [Row]()
    let saved = BLAS.threads
    defer { BLAS.threads = saved }
    for t in Set([1, threads]).sorted() {
        BLAS.threads = t
        for n in sizes {
            let a = try Tensor.randomNormal([n, n], seed: 1), b = try Tensor.randomNormal([n, n], seed: 2)
            var c = try Tensor(zeros: [n, n])
            let flops = 2.0 * Double(n) * Double(n) * Double(n)
            progress("sgemm n=\(n) threads=\(t)")
            let raw = a.withUnsafePointer { pa in
                b.withUnsafePointer { pb in
                    c.withUnsafeMutableBufferPointer { pc in
                        measure(budget: 0.5) {
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n),
                                        1, pa, Int32(n), pb, Int32(n), 0, pc.baseAddress!, Int32(n))
                        }
                    }
                }
            }
            rows.append(Row(variant: "sgemm", impl: "cblas", N: n, M: n, d: n, threads: t, seconds: raw.median,
                            gflops: flops / raw.median * 1e-9, runs: raw.runs, minSeconds: raw.min))
            // The tensor layer into a reused output (the call's own overhead), and allocating a fresh one.
            let tensor = try measure(budget: 0.5) { try Tensor.matmul(a, b, into: &c) }
            rows.append(Row(variant: "sgemm", impl: "tensor", N: n, M: n, d: n, threads: t, seconds: tensor.median,
                            gflops: flops / tensor.median * 1e-9, workspaceBytes: 0, runs: tensor.runs, minSeconds: tensor.min))
            let fresh = try measure(budget: 0.5) { _ = try Tensor.matmul(a, b) }
            rows.append(Row(variant: "sgemm", impl: "tensor-alloc", N: n, M: n, d: n, threads: t, seconds: fresh.median,
                            gflops: flops / fresh.median * 1e-9, workspaceBytes: 0, runs: fresh.runs, minSeconds: fresh.min,
                            note: "allocates its n×n output each call"))
        }
    }
    return rows
}
