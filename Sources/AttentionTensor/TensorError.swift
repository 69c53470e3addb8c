/// Errors raised by the tensor layer.
public enum TensorError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Two shapes that must agree do not.
    case shapeMismatch(String)
    /// A dimension is negative or a shape's element count overflows `Int`.
    case invalidShape([Int])
    /// The storage needed (in bytes) could not be allocated, or exceeds what was allowed.
    case allocationFailed(bytes: Int)
    /// An axis or range outside the tensor.
    case outOfRange(String)

    public var description: String {
        switch self {
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        case .invalidShape(let s): return "invalid shape \(s)"
        case .allocationFailed(let b):
            return "cannot allocate \(b) bytes (\(b >> 20) MiB): over the memory budget (MemoryBudget) or refused by the system"
        case .outOfRange(let s): return "out of range: \(s)"
        }
    }
}
