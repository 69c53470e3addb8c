import AttentionTensor
import CAttentionKernels
import Foundation
import XCTest

/// The low-precision KV row kernels (kvtypes.c): the conversions against independent Swift
/// references (Swift's `Float16` for f16, a round-to-nearest-even written from the definition for
/// bf16, ggml's q8_0 formula), and the decode products over stored rows against float64 sums of
/// the dequantised values, on both the F16C and the portable path.
final class KVTypeKernelTests: XCTestCase {
    let kinds: [(name: String, kind: Int32)] = [("bf16", Int32(AK_KV_BF16)), ("f16", Int32(AK_KV_F16)), ("q8_0", Int32(AK_KV_Q8_0))]

    override func tearDown() { ak_kv_force_portable(0) }

    func values(_ n: Int, seed: UInt64, bound: Float = 1) -> [Float] {
        (try? Tensor.randomUniform([n], seed: seed, bound: bound).scalars) ?? []
    }

    /// bf16 by definition: the two neighbours with 8 significant bits, the nearer one, ties to the
    /// one with an even last bit.
    static func bf16(_ x: Float) -> Float {
        let lower = Float(bitPattern: x.bitPattern & 0xFFFF_0000)
        let upper = Float(bitPattern: (x.bitPattern & 0xFFFF_0000) &+ 0x10000)
        let dl = abs(Double(x) - Double(lower)), du = abs(Double(upper) - Double(x))
        if dl != du { return dl < du ? lower : upper }
        return (lower.bitPattern >> 16) & 1 == 0 ? lower : upper
    }

    /// ggml's quantize_row_q8_0_ref and dequantisation, for one row of d values.
    static func q8(_ x: [Float]) -> (bytes: [UInt8], values: [Float]) {
        var bytes = [UInt8](), out = [Float]()
        for c0 in stride(from: 0, to: x.count, by: 32) {
            let group = Array(x[c0..<min(c0 + 32, x.count)])
            let amax = group.map { abs($0) }.max() ?? 0
            let d = amax / 127, inv: Float = d != 0 ? 1 / d : 0
            let d16 = Float16(d)
            bytes += [UInt8(d16.bitPattern & 0xFF), UInt8(d16.bitPattern >> 8)]
            for i in 0..<32 {
                let q = i < group.count ? Int8((group[i] * inv).rounded(.toNearestOrAwayFromZero)) : 0
                bytes.append(UInt8(bitPattern: q))
                if i < group.count { out.append(Float(d16) * Float(q)) }
            }
        }
        return (bytes, out)
    }

    func encode(_ kind: Int32, _ x: [Float]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xEE, count: ak_kv_row_bytes(kind, x.count))
        ak_kv_encode_rows(kind, x, x.count, 1, x.count, &bytes, bytes.count)
        return bytes
    }

    func decode(_ kind: Int32, _ bytes: [UInt8], _ d: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: d)
        ak_kv_decode_rows(kind, bytes, bytes.count, 1, d, &out, d)
        return out
    }

    func testRowBytes() {
        XCTAssertEqual(ak_kv_row_bytes(Int32(AK_KV_F32), 129), 516)
        XCTAssertEqual(ak_kv_row_bytes(Int32(AK_KV_BF16), 129), 258)
        XCTAssertEqual(ak_kv_row_bytes(Int32(AK_KV_F16), 80), 160)
        XCTAssertEqual(ak_kv_row_bytes(Int32(AK_KV_Q8_0), 128), 136)   // 8.5 bits a value
        XCTAssertEqual(ak_kv_row_bytes(Int32(AK_KV_Q8_0), 129), 170)   // a fifth, zero-padded block
        XCTAssertEqual(ak_kv_row_bytes(Int32(AK_KV_Q8_0), 1), 34)
    }

    /// Special values: zeros, ties, the edges of f16's normal and subnormal ranges, bf16's largest;
    /// decoded by the F16C path and by the portable one.
    func testHalfConversionsAgainstDefinitions() {
        for portable in [false, true] {
            ak_kv_force_portable(portable ? 1 : 0)
            checkHalfConversions()
        }
    }

    func checkHalfConversions() {
        var xs: [Float] = [0, -0.0, 1, -1, 1 + 0x1p-11, 1 + 3 * 0x1p-11, 1 + 0x1p-8, 1 + 3 * 0x1p-8, 65504, 65519.99,
                           -65504, 0x1p-14, 0x1p-24, 0x1p-25, 0x1.8p-25, 0x1p-26, 1e-8, -3e-6, 6.1e-5, 1e-30, 3.3e38,
                           Float.leastNonzeroMagnitude, .leastNormalMagnitude, 0.1, -2.5, 1000.3]
        xs += values(4000, seed: 1, bound: 2) + values(4000, seed: 2, bound: 60000) + values(1000, seed: 3, bound: 1e-4)
        let b = decode(Int32(AK_KV_BF16), encode(Int32(AK_KV_BF16), xs), xs.count)
        let h = decode(Int32(AK_KV_F16), encode(Int32(AK_KV_F16), xs.map { min(max($0, -65504), 65504) }), xs.count)
        for (i, x) in xs.enumerated() {
            XCTAssertEqual(b[i].bitPattern, Self.bf16(x).bitPattern, "bf16(\(x))")
            let xh = min(max(x, -65504), 65504)
            XCTAssertEqual(h[i].bitPattern, Float(Float16(xh)).bitPattern, "f16(\(xh))")
        }
        // Every f16 bit pattern decodes exactly (subnormals, infinities; NaNs stay NaN).
        var all = [UInt8]()
        for u in 0...0xFFFF { all += [UInt8(u & 0xFF), UInt8(u >> 8)] }
        let decoded = decode(Int32(AK_KV_F16), all, 0x10000)
        for u in 0...0xFFFF {
            let f = Float(Float16(bitPattern: UInt16(u)))
            if f.isNaN { XCTAssertTrue(decoded[u].isNaN) } else { XCTAssertEqual(decoded[u].bitPattern, f.bitPattern, "f16 bits \(u)") }
        }
    }

    /// q8_0 bytes equal ggml's formula byte for byte, padding included; decoding is q · f16(d) on
    /// both paths.
    func testQ8ZeroBlocksAgainstGGMLFormula() {
        for portable in [false, true] {
            ak_kv_force_portable(portable ? 1 : 0)
            checkQ8()
        }
    }

    func checkQ8() {
        for d in [1, 7, 31, 32, 33, 64, 80, 128, 129] {
            for (seed, bound) in [(UInt64(d), Float(1)), (UInt64(d + 500), 1e-6), (UInt64(d + 900), 3000)] {
                var x = values(d, seed: seed, bound: bound)
                if d > 40 { for i in 32..<min(64, d) { x[i] = 0 } }   // an all-zero group: scale 0
                let expected = Self.q8(x)
                let bytes = encode(Int32(AK_KV_Q8_0), x)
                XCTAssertEqual(bytes, expected.bytes, "d \(d) bound \(bound)")
                XCTAssertEqual(decode(Int32(AK_KV_Q8_0), bytes, d), expected.values, "d \(d) bound \(bound)")
                // The stated bound: |x − x̂| ≤ 0.57 · max|x_group| / 127 (+ the f16 scale's subnormal step).
                for (i, v) in expected.values.enumerated() {
                    let g = i / 32 * 32
                    let amax = x[g..<min(g + 32, d)].map { abs($0) }.max()!
                    XCTAssertLessThanOrEqual(abs(v - x[i]), 0.57 * amax / 127 + 128 * 0x1p-24, "d \(d) value \(i)")
                }
            }
        }
    }

    /// Products over stored rows against float64 sums of the dequantised values; both paths.
    func testStoredProductsAgainstFloat64() {
        for portable in [false, true] {
            ak_kv_force_portable(portable ? 1 : 0)
            for (name, kind) in kinds {
                for rows in [1, 2, 3, 4, 5, 7, 8, 13, 32] {
                    for d in [1, 7, 8, 33, 64, 80, 128, 129] {
                        for w in [1, 2, 3, 33, 65] {
                            checkProducts(name: "\(name) \(portable ? "portable" : ak_kv_kernel_path_name()) rows \(rows) d \(d) w \(w)",
                                          kind: kind, rows: rows, d: d, w: w)
                        }
                    }
                }
            }
        }
    }

    func ak_kv_kernel_path_name() -> String { String(cString: ak_kv_kernel_path()) }

    func checkProducts(name: String, kind: Int32, rows: Int, d: Int, w: Int) {
        let rb = ak_kv_row_bytes(kind, d), ldb = rb + 6, ldq = d + 3, lds = w + 2, ldo = d + 1
        // Every 7th value tiny: f16 subnormals (below 6.1e-5), which the portable path decodes by hand.
        var keys = values(w * d, seed: UInt64(d * 31 + w), bound: 2)
        for i in stride(from: 3, to: keys.count, by: 7) { keys[i] *= 1e-6 }
        var stored = [UInt8](repeating: 0xAB, count: w * ldb)
        ak_kv_encode_rows(kind, keys, d, w, d, &stored, ldb)
        var deq = [Float](repeating: 0, count: w * d)
        ak_kv_decode_rows(kind, stored, ldb, w, d, &deq, d)
        let q = values(rows * ldq, seed: UInt64(rows * 17 + d))
        var s = [Float](repeating: .nan, count: rows * lds)
        ak_kv_rows_dot_keys(kind, q, ldq, rows, d, stored, ldb, w, &s, lds)
        var p = values(rows * lds, seed: UInt64(rows + w * 5)).map { abs($0) }
        for i in stride(from: 0, to: p.count, by: 5) { p[i] = 0 }
        let o0 = values(rows * ldo, seed: UInt64(d + rows))
        var o = o0
        ak_kv_rows_times_values(kind, p, lds, rows, stored, ldb, w, d, &o, ldo)
        for r in 0..<rows {
            for j in 0..<w {
                var exact = 0.0, mag = 0.0
                for t in 0..<d {
                    let term = Double(q[r * ldq + t]) * Double(deq[j * d + t])
                    exact += term; mag += abs(term)
                }
                // q8_0 keys meet the query quantised to 8-bit blocks: within half a step of each
                // block's query quant times that block's Σ|k| (see testQ8IntegerKeys for the exact check).
                let bound = kind == Int32(AK_KV_Q8_0) ? Self.queryQuantisationBound(Array(q[(r * ldq)..<(r * ldq + d)]), Array(deq[(j * d)..<(j * d + d)])) : 0
                XCTAssertLessThanOrEqual(abs(Double(s[r * lds + j]) - exact), 1e-5 * mag + bound + 1e-30, "\(name): s[\(r), \(j)]")
            }
            XCTAssertTrue(s[r * lds + w].isNaN, "\(name): wrote past w")
            for t in 0..<d {
                var exact = Double(o0[r * ldo + t]), mag = abs(exact)
                for j in 0..<w {
                    let term = Double(p[r * lds + j]) * Double(deq[j * d + t])
                    exact += term; mag += abs(term)
                }
                XCTAssertLessThanOrEqual(abs(Double(o[r * ldo + t]) - exact), 1e-5 * mag + 1e-30, "\(name): o[\(r), \(t)]")
            }
            XCTAssertEqual(o[r * ldo + d], o0[r * ldo + d], "\(name): wrote past dv")
        }
    }

    /// Σ over blocks of 32 of ½ · (max|q_block| / 127) · Σ|k_block|: how far a product with the
    /// query rounded to 8-bit blocks may be from the product with the float query.
    static func queryQuantisationBound(_ q: [Float], _ k: [Float]) -> Double {
        var bound = 0.0
        for c0 in stride(from: 0, to: q.count, by: 32) {
            let c1 = min(c0 + 32, q.count)
            let amax = q[c0..<c1].map { Double(abs($0)) }.max() ?? 0
            bound += 0.5 * amax / 127 * (1 + 1e-6) * k[c0..<c1].reduce(0.0) { $0 + Double(abs($1)) }
        }
        return bound
    }

    /// The query rows quantised as the kernel does (per 32: d = max|q| / 127, round half away from
    /// zero, clamped to ±127), as floats q̂ = d · quant, written from the definition.
    static func quantisedQuery(_ q: [Float]) -> [Double] {
        var out = [Double]()
        for c0 in stride(from: 0, to: q.count, by: 32) {
            let c1 = min(c0 + 32, q.count)
            let amax = q[c0..<c1].map { abs($0) }.max() ?? 0
            let d = amax / 127, inv: Float = d != 0 ? 1 / d : 0
            for t in c0..<c1 { out.append(Double(d) * Double(max(-127, min(127, (q[t] * inv).rounded(.toNearestOrAwayFromZero))))) }
        }
        return out
    }

    /// The integer q·k over q8_0 keys (kvq8.c) on every path the CPU has (portable, AVX2, VNNI):
    /// against a float64 product of the dequantised keys and the query quantised from the
    /// definition (1e-5 of Σ|q̂ k|: only float rounding may differ) and against the float query
    /// (the quantisation bound); bitwise the same on every path, for any grouping of rows
    /// (GQA groups 1, 2, 4 and more), through the one-call and the quantise-once entry points.
    func testQ8IntegerKeysAgainstFloat64() {
        defer { _ = ak_kv_q8_set_path(-1) }
        let best = ak_kv_q8_set_path(-1)
        let kind = Int32(AK_KV_Q8_0)
        for d in [1, 7, 31, 32, 33, 64, 80, 128, 129, 256] {
            for w in [1, 7, 33, 129] {
                for rows in [1, 2, 3, 4, 7] {
                    let rb = ak_kv_row_bytes(kind, d), ldb = rb + 6, ldq = d + 3, lds = w + 2
                    var keys = values(w * d, seed: UInt64(d * 131 + w), bound: 2)
                    for i in stride(from: 5, to: keys.count, by: 11) { keys[i] *= 1e-3 }
                    var stored = [UInt8](repeating: 0xAB, count: w * ldb)
                    ak_kv_encode_rows(kind, keys, d, w, d, &stored, ldb)
                    var deq = [Float](repeating: 0, count: w * d)
                    ak_kv_decode_rows(kind, stored, ldb, w, d, &deq, d)
                    var q = values(rows * ldq, seed: UInt64(rows * 29 + d), bound: 3)
                    if d > 40 { for i in 0..<rows { q[i * ldq + 33] *= 50 } }   // an outlier in one block
                    var results = [[Float]]()
                    for path in 0...best {
                        XCTAssertEqual(ak_kv_q8_set_path(Int32(path)), Int32(path))
                        var s = [Float](repeating: .nan, count: rows * lds)
                        ak_kv_rows_dot_keys(kind, q, ldq, rows, d, stored, ldb, w, &s, lds)
                        results.append(s)
                        // Quantised once, then the kernel: the same bits.
                        var qa = [UInt8](repeating: 0, count: rows * ak_kv_q8_query_bytes(d))
                        ak_kv_q8_quantize_queries(q, ldq, rows, d, &qa)
                        var s2 = [Float](repeating: .nan, count: rows * lds)
                        ak_kv_q8_rows_dot_keys(qa, rows, d, stored, ldb, w, &s2, lds)
                        XCTAssertEqual(s.map(\.bitPattern), s2.map(\.bitPattern), "path \(path) d \(d) w \(w) rows \(rows): quantise-once")
                        // Each row alone: the same bits as in its group.
                        for r in 0..<rows {
                            var one = [Float](repeating: .nan, count: w)
                            ak_kv_rows_dot_keys(kind, Array(q[(r * ldq)...]), ldq, 1, d, stored, ldb, w, &one, w)
                            XCTAssertEqual(one.map(\.bitPattern), s[(r * lds)..<(r * lds + w)].map(\.bitPattern), "path \(path) d \(d) w \(w) row \(r) alone")
                        }
                    }
                    for (path, s) in results.enumerated() {
                        XCTAssertEqual(s.map(\.bitPattern), results[0].map(\.bitPattern), "path \(path) against portable, d \(d) w \(w) rows \(rows)")
                    }
                    let s = results[results.count - 1]
                    for r in 0..<rows {
                        let qr = Array(q[(r * ldq)..<(r * ldq + d)]), qh = Self.quantisedQuery(qr)
                        for j in 0..<w {
                            let kj = Array(deq[(j * d)..<(j * d + d)])
                            var exactQ = 0.0, magQ = 0.0, exact = 0.0, mag = 0.0
                            for t in 0..<d {
                                exactQ += qh[t] * Double(kj[t]); magQ += abs(qh[t] * Double(kj[t]))
                                exact += Double(qr[t]) * Double(kj[t]); mag += abs(Double(qr[t]) * Double(kj[t]))
                            }
                            let got = Double(s[r * lds + j])
                            XCTAssertLessThanOrEqual(abs(got - exactQ), 1e-5 * magQ + 1e-30, "d \(d) w \(w) rows \(rows): s[\(r), \(j)] against q̂·k")
                            XCTAssertLessThanOrEqual(abs(got - exact), 1e-5 * mag + Self.queryQuantisationBound(qr, kj) + 1e-30,
                                                     "d \(d) w \(w) rows \(rows): s[\(r), \(j)] against q·k")
                        }
                        XCTAssertTrue(s[r * lds + w].isNaN, "wrote past w")
                    }
                }
            }
        }
        // The portable switch reaches the integer kernel too.
        ak_kv_force_portable(1)
        XCTAssertEqual(ak_kv_q8_path(), 0)
        ak_kv_force_portable(0)
        XCTAssertEqual(ak_kv_q8_path(), Int32(best))
    }
}
