import SequenceParallel
import XCTest

final class SequenceShardsTests: XCTestCase {
    func testZigzagChunksCoverTheSequenceOnce() {
        for length in [0, 1, 3, 5, 33, 129, 1000] {
            for P in 1...5 {
                for layout in SequenceShards.Layout.allCases {
                    let s = SequenceShards(length: length, ranks: P, layout: layout)
                    var seen = [Int](repeating: 0, count: length)
                    for r in 0..<P { for range in s.ranges(rank: r) { for p in range { seen[p] += 1; XCTAssertEqual(s.owner(of: p), r) } } }
                    XCTAssertEqual(seen, [Int](repeating: 1, count: length), "\(layout) L=\(length) P=\(P)")
                    let counts = (0..<P).map { s.count(rank: $0) }
                    XCTAssertLessThanOrEqual(counts.max()! - counts.min()!, layout == .zigzag ? 2 : 1)
                }
            }
        }
        let z = SequenceShards(length: 16, ranks: 4, layout: .zigzag)
        XCTAssertEqual(z.chunks(rank: 0), [0, 7])
        XCTAssertEqual(z.chunks(rank: 3), [3, 4])
        XCTAssertEqual(z.ranges(rank: 1), [2..<4, 12..<14])
    }

    func testZigzagBalancesCausalWork() {
        let N = 32768
        for P in [2, 4, 8] {
            let zig = workImbalance(queries: SequenceShards(length: N, ranks: P, layout: .zigzag), keys: N, causal: true)
            let con = workImbalance(queries: SequenceShards(length: N, ranks: P, layout: .contiguous), keys: N, causal: true)
            XCTAssertLessThan(zig, 1.001, "P=\(P)")
            XCTAssertEqual(con, Double(2 * P - 1) / Double(P), accuracy: 0.01, "P=\(P)")   // the last rank: (2P - 1)/P of the mean
        }
        // Non-causal work is balanced either way; pairs add up to N·M or the causal triangle.
        let s = SequenceShards(length: 10, ranks: 3, layout: .contiguous)
        XCTAssertEqual((0..<3).map { attendedPairs(queries: s, keys: 7, causal: false, rank: $0) }.reduce(0, +), 70)
        XCTAssertEqual((0..<3).map { attendedPairs(queries: s, keys: 10, causal: true, rank: $0) }.reduce(0, +), 55)
    }

    func testLinearKeyRangesTileTheKeys() throws {
        for (N, M) in [(70, 70), (30, 53), (5, 3), (8, 8), (3, 40)] {
            for P in 1...4 {
                let qs = SequenceShards(length: N, ranks: P, layout: .contiguous)
                var next = 0
                for r in 0..<P {
                    let kr = try linearKeyRange(queries: qs, keys: M, rank: r)
                    XCTAssertEqual(kr.lowerBound, next, "N=\(N) M=\(M) P=\(P) r=\(r)")
                    next = kr.upperBound
                }
                XCTAssertEqual(next, M)
            }
        }
    }

    func testLinearKeyRangeRefusesBadArguments() {
        let zigzag = SequenceShards(length: 10, ranks: 2, layout: .zigzag)
        XCTAssertThrowsError(try linearKeyRange(queries: zigzag, keys: 10, rank: 0)) {
            XCTAssertEqual($0 as? SequenceShardsError, .nonContiguousQueries(layout: "zigzag"))
        }
        let qs = SequenceShards(length: 10, ranks: 2, layout: .contiguous)
        XCTAssertThrowsError(try linearKeyRange(queries: qs, keys: 10, rank: 2)) {
            XCTAssertEqual($0 as? SequenceShardsError, .rankOutOfRange(rank: 2, ranks: 2))
            XCTAssertEqual("\($0)", "invalid argument: rank 2 outside 0..<2")
        }
        XCTAssertThrowsError(try linearKeyRange(queries: qs, keys: 10, rank: -1)) {
            XCTAssertEqual($0 as? SequenceShardsError, .rankOutOfRange(rank: -1, ranks: 2))
        }
        XCTAssertThrowsError(try linearKeyRange(queries: qs, keys: -1, rank: 0)) {
            XCTAssertEqual($0 as? SequenceShardsError, .negativeKeyCount(-1))
        }
    }

    func testStripedDecodePositions() {
        let s = StripedPositions(ranks: 3)
        XCTAssertEqual(s.owned(rank: 1, start: 5, count: 6), [7, 10])
        XCTAssertEqual((0..<3).map { s.count(rank: $0, length: 10) }, [4, 3, 3])
        XCTAssertEqual((0..<3).map { s.count(rank: $0, length: 1) }, [1, 0, 0])
    }
}
