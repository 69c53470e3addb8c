import AttentionTensor
import CAttentionKernels
import Foundation
import XCTest

/// The vectorised kernels against float64 (Foundation) references.
final class ElementwiseTests: XCTestCase {
    /// Distance in units in the last place between a float and the correctly rounded value of `x`.
    func ulps(_ got: Float, _ exact: Double) -> Double {
        let r = Float(exact)
        if got == r { return 0 }
        return abs(Double(got) - exact) / Double(r.ulp)
    }

    /// Sweeps exp over the whole normal range and over softmax's range [-88, 0] densely.
    /// Measured: 0.97 ULP at most on [-87.3, 88.7]; the README and the header claim under 1 ULP.
    func testExpAccuracySweep() {
        var xs = [Float]()
        var x: Float = -87.3
        while x < 88.7 { xs.append(x); x += 0.00731 }
        x = -20
        while x < 0 { xs.append(x); x += 0.0001 }
        xs += [0, -0.0, 1, -1, 88.72, -87.33, Float.leastNormalMagnitude]
        var ys = [Float](repeating: 0, count: xs.count)
        ak_exp(xs, &ys, xs.count)
        var worst = 0.0, worstX: Float = 0
        for (x, y) in zip(xs, ys) {
            let u = ulps(y, Foundation.exp(Double(x)))
            if u > worst { (worst, worstX) = (u, x) }
        }
        XCTAssertLessThan(worst, 1.0, "max \(worst) ULP at x = \(worstX)")
        print("exp: max error \(String(format: "%.3f", worst)) ULP at x = \(worstX) over \(xs.count) points")
    }

    func testExpEdgeValues() {
        let xs: [Float] = [-.infinity, -1000, -87.5, 89, .infinity, 0]
        var ys = [Float](repeating: .nan, count: xs.count)
        ak_exp(xs, &ys, xs.count)
        XCTAssertEqual(ys[0], 0); XCTAssertEqual(ys[1], 0); XCTAssertEqual(ys[2], 0)
        XCTAssertEqual(ys[3], .infinity); XCTAssertEqual(ys[4], .infinity); XCTAssertEqual(ys[5], 1)
    }

    /// Each length from 0 to 40 exercises the vector body and the partial tail.
    func testExpEveryTailLength() {
        for n in 0...40 {
            let xs = (0..<n).map { Float($0) * -0.37 + 3 }
            var ys = [Float](repeating: -1, count: n + 1)
            ak_exp(xs, &ys, n)
            for i in 0..<n { XCTAssertLessThan(ulps(ys[i], Foundation.exp(Double(xs[i]))), 1) }
            XCTAssertEqual(ys[n], -1, "wrote past the end at n = \(n)")
        }
    }

    func softmaxReference(_ row: [Double]) -> [Double] {
        let m = row.max() ?? -.infinity
        if m == -.infinity { return row.map { _ in 0 } }
        let e = row.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    func testSoftmaxPlainPrefixAndAdditiveMasks() throws {
        for cols in [1, 7, 33, 63, 129] {
            let rows = 5
            let x = Ref.random(rows * cols, seed: UInt64(cols)).map { $0 * 30 }
            let t = try Tensor(shape: [rows, cols], scalars: x)
            // No mask.
            let plain = try t.softmax()
            let expected = (0..<rows).flatMap { r in softmaxReference(x[(r * cols)..<((r + 1) * cols)].map(Double.init)) }
            XCTAssertLessThan(Ref.relError(plain.scalars, expected), 1e-6, "cols \(cols)")
            // Prefix: row r keeps r·cols/4 columns; row 0 is fully masked and must be zeros.
            let valid = (0..<rows).map { Int32($0 * cols / 4) }
            let pre = try t.softmax(mask: .prefix(valid))
            var expectedPrefix = [Double]()
            for r in 0..<rows {
                let keep = Int(valid[r])
                let row = x[(r * cols)..<((r + 1) * cols)].enumerated().map { $0.offset < keep ? Double($0.element) : -.infinity }
                expectedPrefix += softmaxReference(row)
            }
            XCTAssertLessThan(Ref.relError(pre.scalars, expectedPrefix), 1e-6)
            XCTAssertTrue(pre.scalars[0..<cols].allSatisfy { $0 == 0 })
            // Additive, broadcast over rows, with -inf entries.
            let bias = (0..<cols).map { $0 % 3 == 0 ? -Float.infinity : Float($0) * 0.1 }
            let add = try t.softmax(mask: .additive(try Tensor(shape: [cols], scalars: bias)))
            var expectedAdd = [Double]()
            for r in 0..<rows {
                expectedAdd += softmaxReference((0..<cols).map { Double(x[r * cols + $0]) + Double(bias[$0]) })
            }
            XCTAssertLessThan(Ref.relError(add.scalars, expectedAdd), 1e-6)
            XCTAssertTrue(add.scalars.allSatisfy { $0.isFinite })
        }
    }

    func testSoftmaxLogitsOfTenThousand() throws {
        let x: [Float] = [1e4, -1e4, 9999, 1e4 - 0.5, -1e4, -1e4 + 1, -9999.5, -1e4]
        let s = try Tensor(shape: [2, 4], scalars: x).softmax()
        let expected = softmaxReference(x[0..<4].map(Double.init)) + softmaxReference(x[4..<8].map(Double.init))
        XCTAssertLessThan(Ref.relError(s.scalars, expected), 1e-6)
    }

    func testFeatureMapsScaleAdd() throws {
        let x = Ref.random(100, seed: 9).map { $0 * 5 }
        let t = try Tensor(shape: [100], scalars: x)
        XCTAssertLessThan(Ref.relError(t.elu1().scalars, x.map { $0 > 0 ? Double($0) + 1 : Foundation.exp(Double($0)) }), 1e-6)
        XCTAssertEqual(t.relu().scalars, x.map { max($0, 0) })
        XCTAssertEqual(t.scaled(by: 0.5).scalars, x.map { $0 * 0.5 })
        XCTAssertEqual(try (t + t).scalars, x.map { $0 + $0 })
        XCTAssertThrowsError(try t + (try Tensor(zeros: [99])))
    }

    func testKernelISAIsReported() {
        XCTAssertTrue(["x86-64-v4", "x86-64-v3", "baseline"].contains(VectorKernels.isa))
    }
}
