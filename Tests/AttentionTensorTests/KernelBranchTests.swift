import AttentionTensor
import CAttentionKernels
import Foundation
import XCTest

/// The kernels' rarely taken branches: subnormal normalisers, the merge of partial results, the
/// value scan that allows -inf.
final class KernelBranchTests: XCTestCase {
    /// A subnormal row sum: 1/l overflows to +inf, so ak_divide_rows divides instead (0/l = 0,
    /// x/l exact); l = 0 gives zeros. Infini's blend treats a subnormal normaliser as an empty
    /// memory, and the delta rule skips the correction for it.
    func testSubnormalNormalisers() {
        let tiny: Float = 1e-40   // subnormal: 1 / tiny = inf in float32
        XCTAssertTrue(tiny > 0 && !tiny.isNormal && (1 / tiny).isInfinite)
        let src: [Float] = [1e-39, 0, -2e-40, 3e-41, 5, 6, 7, 8]
        var dst = [Float](repeating: .nan, count: 8)
        ak_divide_rows(src, 4, &dst, 4, 2, 4, [tiny, 0])
        XCTAssertEqual(dst[0], 1e-39 / tiny)
        XCTAssertEqual(dst[1], 0)
        XCTAssertEqual(dst[2], -2e-40 / tiny)
        XCTAssertEqual(dst[3], 3e-41 / tiny)
        XCTAssertEqual(Array(dst[4...]), [0, 0, 0, 0], "l = 0: a fully masked row")
        XCTAssertTrue(dst.allSatisfy(\.isFinite))

        var a: [Float] = [1, 2, 3, 4, 5, 6]
        let num: [Float] = [1e-39, 1e-39, 1e-39, 3, 3, 3]
        ak_blend_rows(&a, 3, num, 3, [tiny, 2], 2, 3, 0.25)
        XCTAssertEqual(Array(a[0..<3]), [0.75, 1.5, 2.25], "subnormal den: memory read counts as 0")
        let read: Float = 0.25 * 1.5   // gate · num / den = 0.25 · 3 / 2
        let blended: [Float] = [4, 5, 6].map { $0 * 0.75 + read }
        XCTAssertEqual(Array(a[3...]), blended)

        var v: [Float] = [1, 2, 3, 4]
        ak_subtract_ratio_rows(&v, 2, [1e-39, 1e-39, 2, 2], 2, [tiny, 4], 2, 2)
        XCTAssertEqual(v, [1, 2, 2.5, 3.5], "subnormal den: no correction; den 4: v -= num / 4")
    }

    /// ak_merge_partials against float64, with parts that saw no key (m = -inf) and a row no part saw.
    func testMergePartials() {
        let parts = 3, rows = 3, dv = 5
        var o = [Float](repeating: 0, count: parts * rows * dv), m = [Float](repeating: 0, count: parts * rows)
        var l = m
        var rng = SystemRandomNumberGenerator()
        for i in o.indices { o[i] = Float.random(in: -1...1, using: &rng) }
        for i in m.indices { m[i] = Float.random(in: -30...30, using: &rng); l[i] = Float.random(in: 1...9, using: &rng) }
        m[1 * rows + 0] = -.infinity; l[1 * rows + 0] = 0   // part 1 saw no key for row 0
        for s in 0..<parts { m[s * rows + 2] = -.infinity; l[s * rows + 2] = 0 }   // row 2: nobody
        var out = [Float](repeating: .nan, count: rows * dv), mo = [Float](repeating: .nan, count: rows), lo = mo
        ak_merge_partials(parts, o, dv, rows * dv, m, l, rows, rows, dv, &out, dv, &mo, &lo)
        for r in 0..<2 {
            let mx = (0..<parts).map { Double(m[$0 * rows + r]) }.max()!
            XCTAssertEqual(Double(mo[r]), mx)
            var lsum = 0.0
            var acc = [Double](repeating: 0, count: dv)
            for s in 0..<parts where m[s * rows + r] > -.infinity {
                let f = Foundation.exp(Double(m[s * rows + r]) - mx)
                lsum += Double(l[s * rows + r]) * f
                for t in 0..<dv { acc[t] += Double(o[(s * rows + r) * dv + t]) * f }
            }
            XCTAssertEqual(Double(lo[r]), lsum, accuracy: 1e-5 * lsum)
            for t in 0..<dv { XCTAssertEqual(Double(out[r * dv + t]), acc[t], accuracy: 1e-5 * (1 + abs(acc[t]))) }
        }
        XCTAssertEqual(mo[2], -.infinity)
        XCTAssertEqual(lo[2], 0)
        XCTAssertEqual(Array(out[10..<15]), [0, 0, 0, 0, 0])
    }

    /// The scan finds NaN and ±Inf at every position of every tail length, allows -inf when asked,
    /// and reports the largest accepted magnitude.
    func testValueScan() throws {
        for n in [1, 7, 16, 17, 33, 100] {
            for pos in [0, n / 2, n - 1] {
                for bad in [Float.nan, .infinity, -.infinity] {
                    var x = (0..<n).map { Float($0) - 3 }
                    x[pos] = bad
                    var mx: Float = 0
                    XCTAssertEqual(ak_scan_values(x, n, 0, &mx), pos, "n \(n) pos \(pos) \(bad)")
                    mx = 0
                    let allowed = ak_scan_values(x, n, 1, &mx)
                    XCTAssertEqual(allowed, bad == -.infinity ? -1 : pos, "n \(n) pos \(pos) \(bad) with -inf allowed")
                    if bad == -.infinity {
                        let expected = x.filter(\.isFinite).map { abs($0) }.max() ?? 0
                        XCTAssertEqual(mx, expected)
                    }
                }
            }
        }
        let t = try Tensor(shape: [2, 3], scalars: [1, -7, 2, .infinity * -1, 0.5, 3])
        XCTAssertEqual(t.scanValues().invalidIndex, [1, 0])
        let scan = t.scanValues(allowNegativeInfinity: true)
        XCTAssertNil(scan.invalidIndex)
        XCTAssertEqual(scan.maxMagnitude, 7)
    }
}

/// OpenBLAS kernel selection as a pure function of the kernel name, the CPU's vector ISA and the
/// environment (the restart itself is exercised by running `attn` with ATTN_OPENBLAS_ASSUME_CORE).
final class BLASKernelSelectionTests: XCTestCase {
    func testDecisions() {
        typealias S = BLASKernelSelection
        XCTAssertEqual(S.decide(coreName: "Prescott", isa: "x86-64-v4", environment: [:]),
                       .restart(coreType: "SkylakeX", reason: "OpenBLAS chose its generic Prescott kernel on a CPU with AVX-512"))
        XCTAssertEqual(S.decide(coreName: "Core2", isa: "x86-64-v3", environment: ["HOME": "/root"]),
                       .restart(coreType: "Haswell", reason: "OpenBLAS chose its generic Core2 kernel on a CPU with AVX2"))
        // Never over a user's value, never a second restart, nothing to gain without AVX2.
        for (core, isa, env) in [("Prescott", "x86-64-v4", ["OPENBLAS_CORETYPE": "Haswell"]),
                                 ("Prescott", "x86-64-v4", [S.markerVariable: "declined:SkylakeX:crashed"]),
                                 ("Prescott", "baseline", [:]),
                                 ("Zen", "x86-64-v3", [:]),
                                 ("SkylakeX", "x86-64-v4", [:])] {
            guard case .keep(let reason) = S.decide(coreName: core, isa: isa, environment: env) else {
                return XCTFail("\(core) \(isa) \(env) should keep")
            }
            XCTAssertFalse(reason.isEmpty)
        }
        guard case .keep(let user) = S.decide(coreName: "Haswell", isa: "x86-64-v4", environment: ["OPENBLAS_CORETYPE": "Haswell"]) else {
            return XCTFail()
        }
        XCTAssertTrue(user.contains("set by the user"), user)
        guard case .keep(let ours) = S.decide(coreName: "SkylakeX", isa: "x86-64-v4",
                                               environment: ["OPENBLAS_CORETYPE": "SkylakeX", S.markerVariable: "SkylakeX"]) else {
            return XCTFail()
        }
        XCTAssertTrue(ours.contains("chosen by this program"), ours)
    }

    func testProbeGemmAgreesWithFloat64() {
        XCTAssertTrue(BLASKernelSelection.gemmAgreesWithReference())
        XCTAssertFalse(BLASKernelSelection.status.isEmpty)
    }
}
