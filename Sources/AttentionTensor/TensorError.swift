/// Errors raised by the tensor layer.
public enum TensorError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Shapes that must agree do not: `operation` names the call (`matmul`, `reshape`, ...),
    /// `shapes` are its operands' shapes and `expected` says how they had to agree.
    case shapeMismatch(operation: String, shapes: [[Int]], expected: String)
    /// A dimension is negative or a shape's element count overflows `Int`.
    case invalidShape([Int])
    /// The storage needed (in bytes) could not be allocated, or exceeds what was allowed.
    case allocationFailed(bytes: Int)
    /// An axis or range outside the tensor: `argument` names it (`axis`, `range`, `axes`),
    /// `value` is what was given and `bounds` the range it had to lie in.
    case outOfRange(argument: String, value: String, bounds: String)

    public var description: String {
        switch self {
        case .shapeMismatch(let op, let shapes, let e):
            return "shape mismatch in \(op): \(shapes.map { "\($0)" }.joined(separator: " and ")), expected \(e)"
        case .invalidShape(let s): return "invalid shape \(s)"
        case .allocationFailed(let b):
            return "cannot allocate \(b) bytes (\(b >> 20) MiB): over the memory budget (MemoryBudget) or refused by the system"
        case .outOfRange(let a, let v, let b): return "out of range: \(a) \(v) outside \(b)"
        }
    }
}
