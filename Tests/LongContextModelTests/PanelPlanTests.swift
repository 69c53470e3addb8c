@testable import LongContextModel
import XCTest

/// How block weights are cut into dequantised panels for the threads (WeightMatrix's `project`).
final class PanelPlanTests: XCTestCase {
    func testPanelsCoverEveryRowOnceAndShareEvenly() {
        for n in [1, 7, 33, 129, 256, 640, 1024, 2048, 49_152, 262_144] {
            for k in [64, 640, 2048, 8192] {
                for threads in 1...4 {
                    let (P, panels) = panelPlan(rows: n, columns: k, threads: threads)
                    XCTAssertGreaterThanOrEqual(P, 1)
                    XCTAssertEqual(panels, (n + P - 1) / P, "n \(n) k \(k)")
                    XCTAssertGreaterThanOrEqual(panels * P, n)
                    XCTAssertLessThan((panels - 1) * P, n, "an empty panel: n \(n) k \(k) threads \(threads)")
                    // A panel's scratch stays within what panelRows allows, up to one register tile.
                    XCTAssertLessThanOrEqual(P, panelRows(columns: k) + 7)
                    // Enough rows to share: every thread gets a panel (Gemma 3's 256-row k/v projections
                    // were one panel, done by one worker while the other waited).
                    if n >= 16 * threads { XCTAssertGreaterThanOrEqual(panels, threads, "n \(n) k \(k) threads \(threads)") }
                }
            }
        }
        XCTAssertEqual(panelPlan(rows: 256, columns: 640, threads: 2).panels, 2)
        XCTAssertEqual(panelPlan(rows: 1024, columns: 640, threads: 2).panels, 4)
    }
}
