/// Raw access for code that keeps many tensors alive across a long computation (a model's
/// forward and backward), where nesting a closure per operand would bury the maths.
///
/// The pointers stay valid while this tensor value (or a copy sharing its storage) is alive and
/// not reassigned or mutated through another path; the caller keeps the tensor alive across the
/// use, as `withExtendedLifetime` would.
extension Tensor {
    /// The first element for reading (other elements through ``strides``).
    public var unsafeBaseAddress: UnsafePointer<Float> { UnsafePointer(storage.pointer + offset) }

    /// The contiguous, uniquely owned storage for writing in place (copied first if shared or strided).
    public mutating func unsafeMutableBaseAddress() -> UnsafeMutablePointer<Float> {
        makeUnique()
        return storage.pointer + offset
    }
}
