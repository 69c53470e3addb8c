import AttentionTensor
import CAttentionKernels
import Foundation
import XCTest

/// The quantised matrix-vector kernels (`ak_qdot`, include/QuantDot.h) for every type they take,
/// against a float64 sum of (ggml's dequantised weights) · (the dequantised 8-bit activations),
/// on every path the CPU has (portable C, AVX2, AVX-512 VNNI), which must agree bit for bit, and
/// batch-invariant: rows computed together equal rows computed alone, bit for bit.
final class QuantDotKernelTests: XCTestCase {
    static let types: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K, .f16, .bf16, .f32]

    /// Byte offsets of the f16 scales (d, m, dmin) inside one block of `type`.
    func scaleOffsets(_ type: GGMLType) -> [Int] {
        switch type {
        case .q4_0, .q5_0, .q8_0: [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: [0, 2]
        case .q6_K: [208]
        default: []
        }
    }

    /// `rows` rows of `columns` in `type`: random bytes, with every f16 scale a half of exponent
    /// `exponent` (15 is 1.0) and random mantissa; float types get random values of that size.
    func weights(_ type: GGMLType, rows: Int, columns: Int, exponent: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix(seed)
        let n = type.byteCount(elements: rows * columns)!
        var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        func half() -> UInt16 { UInt16(exponent << 10) | UInt16(rng.next() & 0x3ff) | (rng.next() & 1 == 0 ? 0 : 0x8000) }
        switch type {
        case .f16:
            for i in 0..<(n / 2) { let h = half(); bytes[2 * i] = UInt8(h & 0xff); bytes[2 * i + 1] = UInt8(h >> 8) }
        case .bf16:
            for i in 0..<(n / 2) {
                let b = UInt16(127 - 15 + exponent) << 7 | UInt16(rng.next() & 0x7f) | (rng.next() & 1 == 0 ? 0 : 0x8000)
                bytes[2 * i] = UInt8(b & 0xff); bytes[2 * i + 1] = UInt8(b >> 8)
            }
        case .f32:
            for i in 0..<(n / 4) {
                let f = Float(Int(rng.next() % 2001) - 1000) / 1000 * Float(pow(2.0, Double(exponent - 15)))
                withUnsafeBytes(of: f.bitPattern.littleEndian) { for j in 0..<4 { bytes[4 * i + j] = $0[j] } }
            }
        default:
            for blk in 0..<(n / type.typeSize) {
                for o in scaleOffsets(type) {
                    let h = half(), p = blk * type.typeSize + o
                    bytes[p] = UInt8(h & 0xff); bytes[p + 1] = UInt8(h >> 8)
                }
            }
        }
        return bytes
    }

    /// The float values the kernel multiplies by after quantising `x [nx, k]`.
    func dequantizedActivations(_ type: GGMLType, _ act: [UInt8], nx: Int, k: Int) -> [Double] {
        act.withUnsafeBytes { raw -> [Double] in
            let rowBytes = ak_qdot_activation_bytes(Int32(type.rawValue), k)
            var out = [Double]()
            for r in 0..<nx {
                let row = raw.baseAddress! + r * rowBytes
                switch type {
                case .f32, .f16, .bf16:
                    for j in 0..<k { out.append(Double(row.loadUnaligned(fromByteOffset: 4 * j, as: Float.self))) }
                case .q4_K, .q5_K, .q6_K:
                    // Per 256 columns: 8 scales, 8 block sums, 256 quants.
                    for j in 0..<k {
                        let blk = row + j / 256 * 320
                        let d = Double(blk.loadUnaligned(fromByteOffset: 4 * (j % 256 / 32), as: Float.self))
                        out.append(d * Double(blk.loadUnaligned(fromByteOffset: 64 + j % 256, as: Int8.self)))
                    }
                default:
                    for b in 0..<(k / 32) {
                        let blk = row + b * 40, d = Double(blk.loadUnaligned(as: Float.self))
                        for j in 0..<32 { out.append(d * Double(blk.loadUnaligned(fromByteOffset: 8 + j, as: Int8.self))) }
                    }
                }
            }
            return out
        }
    }

    func quantize(_ type: GGMLType, _ x: [Float], nx: Int, k: Int) -> [UInt8] {
        var act = [UInt8](repeating: 0, count: ak_qdot_activation_bytes(Int32(type.rawValue), k) * nx)
        act.withUnsafeMutableBytes { ak_qdot_quantize(Int32(type.rawValue), x, k, nx, k, $0.baseAddress!) }
        return act
    }

    func run(_ type: GGMLType, _ w: [UInt8], rows: Int, k: Int, _ act: [UInt8], nx: Int, actOffset: Int = 0) -> [Float] {
        var y = [Float](repeating: .nan, count: rows * nx)
        let rowBytes = type.byteCount(elements: k)!
        w.withUnsafeBytes { wp in
            act.withUnsafeBytes { ap in
                ak_qdot(Int32(type.rawValue), wp.baseAddress!, rowBytes, rows, k, ap.baseAddress! + actOffset, nx, &y, rows, 0)
            }
        }
        return y
    }

    /// The paths this CPU runs (0 portable, 1 AVX2, 2 AVX-512 VNNI).
    var paths: [Int32] {
        defer { _ = ak_qdot_set_path(-1) }
        return Array(Set((0...2).map { ak_qdot_set_path($0) })).sorted()
    }

    func testAgainstFloat64AndAcrossPaths() throws {
        let paths = self.paths
        print("quantdot paths on this CPU: \(paths)")
        for type in Self.types {
            let columnsList = type.blockSize == 256 ? [256, 768] : type.blockSize == 32 ? [32, 96, 576] : [16, 37, 2085]   // 2085: past the float path's 1,024-column chunks
            for (rows, k) in zip([1, 7, 33, 129], columnsList + columnsList) {
                let cases: [(Int, Float)] = [(8, 1), (30, 1), (1, 1e-3), (15, 1e18)]
                for (exponent, xScale) in cases {
                    let seedBase: Int = Int(type.rawValue) * 1000 + rows * 10 + exponent
                    let seed = UInt64(seedBase)
                    let w = weights(type, rows: rows, columns: k, exponent: exponent, seed: seed)
                    let nx = rows == 33 ? 16 : rows % 4 + 1
                    let x0: [Float] = try Tensor.randomUniform([nx * k], seed: seed + 1, bound: 1).scalars
                    var x: [Float] = x0.map { (v: Float) -> Float in v * xScale }
                    if nx > 2 { for j in 0..<k { x[k + j] = 0 } }   // an all-zero row
                    let act = quantize(type, x, nx: nx, k: k)
                    let xd = dequantizedActivations(type, act, nx: nx, k: k)
                    var wd = [Float](repeating: 0, count: rows * k)
                    try w.withUnsafeBytes { try type.dequantize($0.baseAddress!, count: rows * k, into: &wd) }
                    var results = [[Float]]()
                    for p in paths {
                        XCTAssertEqual(ak_qdot_set_path(p), p)
                        results.append(run(type, w, rows: rows, k: k, act, nx: nx))
                    }
                    _ = ak_qdot_set_path(-1)
                    let y: [Float] = results[0]
                    for (p, other) in zip(paths, results).dropFirst() {
                        XCTAssertEqual(other.map(\.bitPattern), y.map(\.bitPattern), "\(type) rows \(rows) k \(k): path \(p) ≠ portable")
                    }
                    for r in 0..<nx {
                        for i in 0..<rows {
                            var exact = 0.0, magnitude = 0.0
                            for j in 0..<k {
                                let t = Double(wd[i * k + j]) * xd[r * k + j]
                                exact += t
                                magnitude += abs(t)
                            }
                            // Per block a few float roundings and one running sum over ≤ 24 blocks:
                            // (blocks + 4)·2⁻²⁴ of the magnitude, with room.
                            let tolerance = 1e-5 * magnitude + 1e-30
                            XCTAssertLessThanOrEqual(abs(Double(y[r * rows + i]) - exact), tolerance,
                                                     "\(type) rows \(rows) k \(k) exp \(exponent) scale \(xScale): y[\(r), \(i)]")
                        }
                    }
                    // Batch invariance: each row alone gives the bits it had in the batch.
                    let rowBytes = ak_qdot_activation_bytes(Int32(type.rawValue), k)
                    for r in 0..<nx {
                        let alone: [Float] = run(type, w, rows: rows, k: k, act, nx: 1, actOffset: r * rowBytes)
                        XCTAssertEqual(alone.map(\.bitPattern), Array(y[(r * rows)..<((r + 1) * rows)]).map(\.bitPattern),
                                       "\(type): row \(r) alone differs from the batch of \(nx)")
                    }
                }
            }
        }
    }

    /// An outlier in one block of 32 activation columns (Gemma 3's attention-output and MLP-down
    /// inputs carry such) costs only that block's resolution, for the K-quants too. The outliers'
    /// blocks hold nothing else (the outlier is then its block's max, quantised to ±127 within a
    /// few ulps), so against the float64 product with the unquantised x the error stays within
    /// Σ|w|·d_b/2 over the other blocks, d_b = max|x| / 127 of x's own block of 32, plus the float
    /// steps' roundings. With one scale per 256 columns (ggml's q8_K), the other blocks under an
    /// outlier would round at its scale: about ten times this bound here.
    func testActivationOutlierCostsOnlyItsBlockOf32() throws {
        for type in [GGMLType.q4_0, .q8_0, .q4_K, .q5_K, .q6_K] {
            let rows = 7, k = 512
            let w = weights(type, rows: rows, columns: k, exponent: 12, seed: 40 + UInt64(type.rawValue))
            var x: [Float] = try Tensor.randomUniform([k], seed: 41, bound: 1).scalars
            let outliers: [Int: Float] = [5: 900, 300: -2500]
            for (j, v) in outliers {
                for e in (j / 32 * 32)..<(j / 32 * 32 + 32) { x[e] = 0 }
                x[j] = v
            }
            let act = quantize(type, x, nx: 1, k: k)
            var wd = [Float](repeating: 0, count: rows * k)
            try w.withUnsafeBytes { try type.dequantize($0.baseAddress!, count: rows * k, into: &wd) }
            for p in paths {
                _ = ak_qdot_set_path(p)
                let y = run(type, w, rows: rows, k: k, act, nx: 1)
                for i in 0..<rows {
                    var exact = 0.0, bound = 0.0, magnitude = 0.0
                    for b in 0..<(k / 32) {
                        let d = Double(x[(32 * b)..<(32 * b + 32)].map { abs($0) }.max()!) / 127
                        for j in (32 * b)..<(32 * b + 32) {
                            let wj = Double(wd[i * k + j])
                            exact += wj * Double(x[j])
                            bound += outliers[j] != nil ? abs(wj * Double(x[j])) * 1e-6 : outliers.keys.contains { $0 / 32 == b } ? 0 : abs(wj) * d / 2
                            magnitude += abs(wj * Double(x[j]))
                        }
                    }
                    XCTAssertLessThanOrEqual(abs(Double(y[i]) - exact), bound * (1 + 1e-6) + 1e-6 * magnitude,
                                             "\(type) path \(p) row \(i)")
                }
            }
            _ = ak_qdot_set_path(-1)
        }
    }

    func testAccumulateAddsToOutput() throws {
        let type = GGMLType.q4_K, k = 256, rows = 5
        let w = weights(type, rows: rows, columns: k, exponent: 10, seed: 7)
        let x = try Tensor.randomUniform([k], seed: 8, bound: 1).scalars
        let act = quantize(type, x, nx: 1, k: k)
        let y = run(type, w, rows: rows, k: k, act, nx: 1)
        var acc = [Float](repeating: 2, count: rows)
        w.withUnsafeBytes { wp in
            act.withUnsafeBytes { ap in
                ak_qdot(Int32(type.rawValue), wp.baseAddress!, type.byteCount(elements: k)!, rows, k, ap.baseAddress!, 1, &acc, rows, 1)
            }
        }
        XCTAssertEqual(acc, y.map { 2 + $0 })
    }

    func testSupports() {
        XCTAssertEqual(ak_qdot_supports(12, 512), 1)
        XCTAssertEqual(ak_qdot_supports(12, 500), 0)
        XCTAssertEqual(ak_qdot_supports(2, 64), 1)
        XCTAssertEqual(ak_qdot_supports(10, 256), 0)   // q2_K: no kernel
        XCTAssertEqual(ak_qdot_supports(1, 37), 1)
    }
}

/// SplitMix64, for the test's random bytes.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e3779b97f4a7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58476d1ce4e5b9
        z = (z ^ (z >> 27)) &* 0x94d049bb133111eb
        return z ^ (z >> 31)
    }
}
