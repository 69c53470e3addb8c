@testable import AttentionTensor
import XCTest

/// `BLAS.sgemm` and `Tensor.matmul` against a float64 triple loop, at sizes that are not multiples
/// of any kernel block, every transpose combination, offsets and padded leading dimensions.
final class GEMMTests: XCTestCase {
    /// Float64 product of op(A) (m×k) and op(B) (k×n) read from row-major storage.
    func reference(_ a: [Float], lda: Int, ta: Bool, _ b: [Float], ldb: Int, tb: Bool,
                   m: Int, n: Int, k: Int, aOff: Int, bOff: Int) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k {
                    let x = ta ? a[aOff + p * lda + i] : a[aOff + i * lda + p]
                    let y = tb ? b[bOff + j * ldb + p] : b[bOff + p * ldb + j]
                    s += Double(x) * Double(y)
                }
                c[i * n + j] = s
            }
        }
        return c
    }

    func testSgemmAllTransposesOffsetsAndLeadingDimensions() {
        for size in [1, 7, 33, 129] {
            let (m, n, k) = (size, size == 1 ? 1 : size - 2, size == 1 ? 1 : size + 3)
            for ta in [false, true] {
                for tb in [false, true] {
                    let aRows = ta ? k : m, aCols = ta ? m : k
                    let bRows = tb ? n : k, bCols = tb ? k : n
                    let lda = aCols + 5, ldb = bCols + 3, ldc = n + 2
                    let aOff = 11, bOff = 4
                    let a = Ref.random(aOff + aRows * lda, seed: 1), b = Ref.random(bOff + bRows * ldb, seed: 2)
                    var c = [Float](repeating: .nan, count: m * ldc)
                    a.withUnsafeBufferPointer { pa in
                        b.withUnsafeBufferPointer { pb in
                            c.withUnsafeMutableBufferPointer { pc in
                                BLAS.sgemm(ta ? .transpose : .none, tb ? .transpose : .none, m: m, n: n, k: k,
                                           a: pa.baseAddress! + aOff, lda: lda, b: pb.baseAddress! + bOff, ldb: ldb,
                                           c: pc.baseAddress!, ldc: ldc)
                            }
                        }
                    }
                    let expected = reference(a, lda: lda, ta: ta, b, ldb: ldb, tb: tb, m: m, n: n, k: k, aOff: aOff, bOff: bOff)
                    let got = (0..<m).flatMap { i in c[(i * ldc)..<(i * ldc + n)] }
                    // float32 accumulation of k products: error grows like k·eps; 1e-5 is ample for k <= 132.
                    XCTAssertLessThan(Ref.relError(got, expected), 1e-5, "size \(size) ta \(ta) tb \(tb)")
                    // Padding columns of C are untouched.
                    XCTAssertTrue(c[n].isNaN || ldc == n)
                }
            }
        }
    }

    func testMatmulReadsTransposedAndSlicedViewsWithoutCopy() throws {
        let a = try Tensor(shape: [40, 33], scalars: Ref.random(40 * 33, seed: 3))
        let b = try Tensor(shape: [29, 33], scalars: Ref.random(29 * 33, seed: 4))
        // rows 3..<36 of a, times the transpose of rows 2..<27 of b.
        let av = try a.rows(3..<36), bv = try b.rows(2..<27).transposed()
        XCTAssertFalse(bv.isContiguous)
        XCTAssertEqual(bv.matrixOperand()?.transpose, .transpose)   // a BLAS flag, not a copy
        let c = try Tensor.matmul(av, bv)
        XCTAssertEqual(c.shape, [33, 25])
        let expected = reference(a.scalars, lda: 33, ta: false, b.scalars, ldb: 33, tb: true,
                                 m: 33, n: 25, k: 33, aOff: 3 * 33, bOff: 2 * 33)
        XCTAssertLessThan(Ref.relError(c.scalars, expected), 1e-5)
    }

    func testBatchedAndGroupBroadcastMatmul() throws {
        // a: [B=2, H=6, m=7, k=9], b: [B=2, Hkv=3, k=9, n=5]: head h uses b's head h / 2.
        let (B, H, Hkv, m, k, n) = (2, 6, 3, 7, 9, 5)
        let a = try Tensor(shape: [B, H, m, k], scalars: Ref.random(B * H * m * k, seed: 5))
        let b = try Tensor(shape: [B, Hkv, k, n], scalars: Ref.random(B * Hkv * k * n, seed: 6))
        let c = try Tensor.matmul(a, b)
        XCTAssertEqual(c.shape, [B, H, m, n])
        let av = a.scalars, bv = b.scalars, cv = c.scalars
        for bi in 0..<B {
            for h in 0..<H {
                let expected = reference(av, lda: k, ta: false, bv, ldb: n, tb: false, m: m, n: n, k: k,
                                         aOff: (bi * H + h) * m * k, bOff: (bi * Hkv + h / (H / Hkv)) * k * n)
                let got = Array(cv[((bi * H + h) * m * n)..<((bi * H + h + 1) * m * n)])
                XCTAssertLessThan(Ref.relError(got, expected), 1e-5)
            }
        }
        // Plain broadcasting: a rank-2 b applies to every batch entry.
        let w = try Tensor(shape: [k, n], scalars: Ref.random(k * n, seed: 7))
        let cw = try Tensor.matmul(a, w)
        XCTAssertEqual(cw.shape, [B, H, m, n])
        let expected0 = reference(av, lda: k, ta: false, w.scalars, ldb: n, tb: false, m: m, n: n, k: k, aOff: 5 * m * k, bOff: 0)
        XCTAssertLessThan(Ref.relError(Array(cw.scalars[(5 * m * n)..<(6 * m * n)]), expected0), 1e-5)
    }

    func testMatmulRejectsDisagreeingShapes() throws {
        let a = try Tensor(zeros: [2, 4, 3, 5]), b = try Tensor(zeros: [2, 3, 5, 2])
        XCTAssertThrowsError(try Tensor.matmul(a, b))   // 4 heads vs 3: neither divides the other
        XCTAssertThrowsError(try Tensor.matmul(try Tensor(zeros: [3, 4]), try Tensor(zeros: [5, 2])))
        XCTAssertThrowsError(try Tensor.matmul(try Tensor(zeros: [3]), try Tensor(zeros: [3, 2])))
    }
}
