import Foundation

/// 64-byte aligned Float32 memory shared by tensors (copy-on-write: only mutated when unique).
final class TensorStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int

    /// Uninitialised storage for `count` floats, or nil when the allocation fails.
    init?(uninitializedCount count: Int) {
        let bytes = max(1, count) &* MemoryLayout<Float>.stride
        guard count >= 0, count <= Int.max / MemoryLayout<Float>.stride else { return nil }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else { return nil }
        pointer = raw.bindMemory(to: Float.self, capacity: max(1, count))
        self.count = count
    }

    deinit { free(pointer) }
}

/// Checked element count of a shape: throws on negative dimensions or overflow.
public func elementCount(of shape: [Int]) throws -> Int {
    // The product of the non-zero dimensions must fit too: strides are computed from it, and a
    // shape like (0, 10^5, 10^5, 10^5, 10^5) is no tensor anyone meant.
    var n = 1, strideProduct = 1
    for s in shape {
        guard s >= 0 else { throw TensorError.invalidShape(shape) }
        let (p, o) = n.multipliedReportingOverflow(by: s)
        let (q, o2) = strideProduct.multipliedReportingOverflow(by: max(s, 1))
        guard !o, !o2, p <= Int.max / 8, q <= Int.max / 8 else { throw TensorError.invalidShape(shape) }
        n = p
        strideProduct = q
    }
    return n
}

/// Row-major (C order) strides of a shape.
public func rowMajorStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var acc = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        strides[i] = acc
        acc *= max(shape[i], 1)
    }
    return strides
}

/// Steps a row-major multi-index over the first `axes` axes of `shape` (the last of them fastest).
/// Returns false after the last index, leaving `index` back at all zeros.
@inline(__always)
func advance(_ index: inout [Int], over shape: [Int], axes: Int) -> Bool {
    var axis = axes - 1
    while axis >= 0 {
        index[axis] += 1
        if index[axis] < shape[axis] { return true }
        index[axis] = 0
        axis -= 1
    }
    return false
}
