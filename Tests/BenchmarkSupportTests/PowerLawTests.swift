import BenchmarkSupport
import Foundation
import XCTest

final class PowerLawTests: XCTestCase {
    func testRecoversExponentsOfSyntheticData() throws {
        let x = [4096.0, 8192, 16384, 32768, 65536, 131072]
        for k in [1.0, 1.15, 2.0, 0.5] {
            let y = x.map { 3e-9 * Foundation.pow($0, k) }
            let fit = try XCTUnwrap(PowerLaw.fit(x: x, y: y))
            XCTAssertEqual(fit.exponent, k, accuracy: 1e-9)
            XCTAssertEqual(fit.coefficient, 3e-9, accuracy: 3e-9 * 1e-6)
            XCTAssertEqual(fit.r2, 1, accuracy: 1e-12)
        }
        // Multiplicative noise of ±5% moves the exponent a little; r² stays high.
        let noise = [1.05, 0.95, 1.02, 0.97, 1.04, 0.99]
        let fit = try XCTUnwrap(PowerLaw.fit(x: x, y: zip(x, noise).map { 1e-3 * $0.0 * $0.1 }))
        XCTAssertEqual(fit.exponent, 1, accuracy: 0.03)
        XCTAssertGreaterThan(fit.r2, 0.99)
    }

    func testRejectsDegenerateInput() {
        XCTAssertNil(PowerLaw.fit(x: [1], y: [1]))
        XCTAssertNil(PowerLaw.fit(x: [2, 2], y: [1, 3]))
        XCTAssertNil(PowerLaw.fit(x: [0, -1], y: [1, 3]))
        XCTAssertNotNil(PowerLaw.fit(x: [1, 2, .nan], y: [1, 4, 9]))
    }

    func testChartRendersEveryPoint() {
        var chart = SVGChart(title: "t", xLabel: "N", yLabel: "s")
        chart.series = [.init(name: "a <1>", points: [(1024, 0.1), (2048, 0.4)]), .init(name: "b", points: [(1024, 1e-3)], connect: false)]
        let svg = chart.render()
        XCTAssertEqual(svg.components(separatedBy: "<circle").count - 1, 3)
        XCTAssertTrue(svg.contains("a &lt;1&gt;"))
        XCTAssertTrue(svg.hasPrefix("<svg"))
    }
}
