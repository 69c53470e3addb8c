import XCTest
import AttentionTensor
@testable import LongAttention

/// The errors name what they refuse in typed fields (the tensor, the argument, the window, the
/// buffer), not only in prose: a caller can match on them.
final class TypedErrorTests: XCTestCase {
    func testAttentionErrorsNameTheTensorAndTheArgument() throws {
        let q = try Tensor(zeros: [1, 4, 8, 16]), k = try Tensor(zeros: [1, 2, 8, 16]), v = try Tensor(zeros: [1, 2, 8, 16])
        func thrown(_ call: () throws -> Tensor) -> AttentionError? {
            do { _ = try call(); return nil } catch { return error as? AttentionError }
        }
        // A rank-3 query tensor.
        XCTAssertEqual(thrown { try scaledDotProductAttention(queries: try Tensor(zeros: [4, 8, 16]), keys: k, values: v) },
                       .wrongRank(name: "queries", expected: 4, shape: [4, 8, 16]))
        // H = 3 query heads cannot share Hkv = 2 key/value heads.
        XCTAssertEqual(thrown { try scaledDotProductAttention(queries: try Tensor(zeros: [1, 3, 8, 16]), keys: k, values: v) },
                       .headsNotGrouped(H: 3, Hkv: 2))
        // Keys of another head dimension: the keys are named, with their shape.
        guard case .shapeMismatch(let tensor, let shape, let expected)? =
                thrown({ try scaledDotProductAttention(queries: q, keys: try Tensor(zeros: [1, 2, 8, 12]), values: v) }) else {
            return XCTFail("keys of d = 12 were not a shape mismatch")
        }
        XCTAssertEqual(tensor, "keys")
        XCTAssertEqual(shape, [1, 2, 8, 12])
        XCTAssertTrue(expected.contains("d = 16"), expected)
        // Options out of their domain name the option and the value given.
        XCTAssertEqual(thrown { try scaledDotProductAttention(queries: q, keys: k, values: v, threads: 0) },
                       .invalidArgument(name: "threads", value: "0", expected: "at least 1"))
        XCTAssertEqual(thrown { try scaledDotProductAttention(queries: q, keys: k, values: v, scale: .infinity) },
                       .invalidArgument(name: "scale", value: "inf", expected: "a finite number"))
        guard case .invalidArgument(let name, let value, _)? =
                thrown({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .keyLengths([9])) }) else {
            return XCTFail("a key length past M was not an invalid argument")
        }
        XCTAssertEqual([name, value], ["keyLengths", "9"])
        guard case .shapeMismatch("keyLengths", [2], _)? =
                thrown({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .keyLengths([1, 2])) }) else {
            return XCTFail("two key lengths for one sequence were not a shape mismatch of keyLengths")
        }
        guard case .invalidWindow(0, nil, _)? =
                thrown({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .slidingWindow(0)) }) else {
            return XCTFail("a window of 0 was not an invalid window")
        }
        XCTAssertThrowsError(try BigBirdPlan(sequenceLength: 16, heads: 1, blockSize: 4, windowBlocks: 2)) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "windowBlocks", value: "2", expected: "odd and >= 1"))
        }
        // The description keeps the names.
        let text = "\(AttentionError.invalidArgument(name: "threads", value: "0", expected: "at least 1"))"
        XCTAssertTrue(text.contains("threads") && text.contains("0") && text.contains("at least 1"), text)
    }

    func testKVCacheErrorsNameTheLayerTheWindowAndTheBudget() throws {
        XCTAssertThrowsError(try KVCache(layers: 2, batch: 1, kvHeads: 1, capacity: 8, headDimension: 4, windows: [0, nil])) {
            guard case .invalidWindow(0, nil, _)? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        var cache = try KVCache(layers: 2, batch: 1, kvHeads: 1, capacity: 8, headDimension: 4)
        let kv = try Tensor(zeros: [1, 1, 1, 4])
        XCTAssertThrowsError(try cache.append(layer: 2, keys: kv, values: kv)) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "layer", value: "2", expected: "0..<2"))
        }
        XCTAssertThrowsError(try cache.append(layer: 0, keys: try Tensor(zeros: [1, 1, 1, 5]), values: kv)) {
            guard case .shapeMismatch("keys", [1, 1, 1, 5], _)? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        let saved = MemoryBudget.limitBytes
        defer { MemoryBudget.limitBytes = saved }
        MemoryBudget.limitBytes = 64 << 20   // allocations under 64 MiB are not checked
        XCTAssertThrowsError(try KVCache(layers: 1, batch: 1, kvHeads: 1, capacity: 1 << 20, headDimension: 64)) {
            guard case .tooLarge(_, let bytes?, let limit?)? = $0 as? AttentionError else { return XCTFail("\($0)") }
            XCTAssertGreaterThanOrEqual(bytes, 2 * (1 << 20) * 64 * 4)
            XCTAssertLessThanOrEqual(limit, 64 << 20)
        }
    }

    func testTensorErrorsNameTheOperationAndTheShapes() throws {
        let a = try Tensor(zeros: [2, 3]), b = try Tensor(zeros: [4, 5])
        XCTAssertThrowsError(try Tensor.matmul(a, b)) {
            guard case .shapeMismatch("matmul", [[2, 3], [4, 5]], let expected)? = $0 as? TensorError else { return XCTFail("\($0)") }
            XCTAssertTrue(expected.contains("3 and 4"), expected)
        }
        XCTAssertThrowsError(try a.reshaped([7])) {
            XCTAssertEqual($0 as? TensorError, .shapeMismatch(operation: "reshape", shapes: [[2, 3], [7]], expected: "the same element count"))
        }
        XCTAssertThrowsError(try a.slice(axis: 1, 2..<4)) {
            XCTAssertEqual($0 as? TensorError, .outOfRange(argument: "range on axis 1", value: "2..<4", bounds: "0..<3"))
        }
        XCTAssertThrowsError(try a.permuted([0, 0])) {
            guard case .outOfRange("axes", "[0, 0]", _)? = $0 as? TensorError else { return XCTFail("\($0)") }
        }
    }
}
