/// Raw access for the package's own code that keeps many tensors alive across a long computation
/// (a model's forward and backward), where nesting a closure per operand would bury the maths.
///
/// `package`, not `public`: the pointers escape, and stay valid only while this tensor value (or a
/// copy sharing its storage) is alive and not reassigned or mutated through another path; the
/// caller keeps the tensor alive across the use, as `withExtendedLifetime` would. Clients of the
/// library use the scoped ``Tensor/withUnsafePointer(_:)`` and
/// ``Tensor/withUnsafeMutableBufferPointer(_:)``, whose pointers cannot outlive the storage.
extension Tensor {
    /// The first element for reading (other elements through ``strides``).
    package var unsafeBaseAddress: UnsafePointer<Float> { UnsafePointer(storage.pointer + offset) }

    /// The contiguous, uniquely owned storage for writing in place (copied first if shared or strided).
    package mutating func unsafeMutableBaseAddress() -> UnsafeMutablePointer<Float> {
        makeUnique()
        return storage.pointer + offset
    }
}
