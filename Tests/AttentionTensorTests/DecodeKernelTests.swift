import AttentionTensor
import CAttentionKernels
import Foundation
import XCTest

/// The decode kernels (`ak_rows_dot_keys`, `ak_rows_times_values`) against float64 sums, on both
/// float32 paths (the 8-lane AVX2 kernels and the 16-lane ones, forced with `ak_decode_force_wide`), over
/// every path they take: four-row groups and the one-row remainder, four-key steps and the key
/// tail, d = 128 register paths, 64- and 16-column value chunks and the scalar tail, leading
/// dimensions larger than the rows, and a second 32-key block.
final class DecodeKernelTests: XCTestCase {
    /// Seeded uniform values in [-1, 1).
    func values(_ n: Int, seed: UInt64) -> [Float] {
        (try? Tensor.randomUniform([n], seed: seed, bound: 1).scalars) ?? []
    }

    /// |got − exact| ≤ 1e-5 · Σ|terms|: the float32 error bound of a length-≤129 dot product
    /// is about 129 · 2⁻²⁴ ≈ 8e-6 of the sum of magnitudes.
    func assertClose(_ got: Float, _ exact: Double, _ magnitude: Double, _ what: @autoclosure () -> String) {
        XCTAssertLessThanOrEqual(abs(Double(got) - exact), 1e-5 * magnitude + 1e-30, what())
    }

    /// The tests below on both float32 paths: the CPU's choice, then the 16-lane kernels forced
    /// (on an AVX2 host the CPU's choice is the 8-lane path, and the other would go untested).
    func onBothPaths(_ body: () -> Void) {
        ak_decode_force_wide(0)
        let native = String(cString: ak_decode_kernel_path())
        body()
        ak_decode_force_wide(1)
        defer { ak_decode_force_wide(0) }
        XCTAssertEqual(String(cString: ak_decode_kernel_path()), "16-lane")
        if native != "16-lane" { body() }
    }

    func testDotKeysAgainstFloat64() { onBothPaths(dotKeysAgainstFloat64) }
    func testTimesValuesAgainstFloat64() { onBothPaths(timesValuesAgainstFloat64) }

    func dotKeysAgainstFloat64() {
        for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 32] {
            for d in [1, 7, 16, 33, 128, 129] {
                for w in [1, 3, 4, 7, 33, 65] {
                    let ldq = d + 3, ldk = d + 5, lds = w + 2
                    let q = values(rows * ldq, seed: UInt64(rows * 1000 + d)), k = values(w * ldk, seed: UInt64(w * 1000 + d))
                    var s = [Float](repeating: .nan, count: rows * lds)
                    ak_rows_dot_keys(q, ldq, rows, d, k, ldk, w, &s, lds)
                    for r in 0..<rows {
                        for j in 0..<w {
                            var exact = 0.0, mag = 0.0
                            for t in 0..<d {
                                let term = Double(q[r * ldq + t]) * Double(k[j * ldk + t])
                                exact += term; mag += abs(term)
                            }
                            assertClose(s[r * lds + j], exact, mag, "rows \(rows) d \(d) w \(w): s[\(r), \(j)]")
                        }
                        // Columns past w are not written.
                        for j in w..<lds { XCTAssertTrue(s[r * lds + j].isNaN, "rows \(rows) d \(d) w \(w): wrote s[\(r), \(j)]") }
                    }
                }
            }
        }
    }

    func timesValuesAgainstFloat64() {
        for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 32] {
            for dv in [1, 17, 64, 100, 128, 129] {
                for w in [1, 3, 33, 65] {
                    let ldp = w + 1, ldv = dv + 7, ldo = dv + 2
                    // Probabilities in [0, 1), a quarter of them exactly 0 (masked keys).
                    var p = values(rows * ldp, seed: UInt64(rows * 7 + w)).map { abs($0) }
                    for i in stride(from: 0, to: p.count, by: 4) { p[i] = 0 }
                    let v = values(w * ldv, seed: UInt64(dv * 13 + w))
                    let o0 = values(rows * ldo, seed: UInt64(rows + dv))
                    var o = o0
                    ak_rows_times_values(p, ldp, rows, v, ldv, w, dv, &o, ldo)
                    for r in 0..<rows {
                        for t in 0..<dv {
                            var exact = Double(o0[r * ldo + t]), mag = abs(exact)
                            for j in 0..<w {
                                let term = Double(p[r * ldp + j]) * Double(v[j * ldv + t])
                                exact += term; mag += abs(term)
                            }
                            assertClose(o[r * ldo + t], exact, mag, "rows \(rows) dv \(dv) w \(w): o[\(r), \(t)]")
                        }
                        for t in dv..<ldo { XCTAssertEqual(o[r * ldo + t], o0[r * ldo + t], "rows \(rows) dv \(dv): wrote o[\(r), \(t)]") }
                    }
                }
            }
        }
    }
}
