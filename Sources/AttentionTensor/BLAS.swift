import COpenBLAS
import Foundation

/// Thin, typed access to the OpenBLAS entry points the package uses.
///
/// Everything here is a direct call: no copies, no allocation. Pointers are raw so that callers
/// can address sub-matrices by offset and leading dimension (a slice or a transpose costs nothing).
public enum BLAS {
    /// Whether an operand is used as stored or transposed.
    public enum Transpose: Sendable {
        case none, transpose
        var cblas: CBLAS_TRANSPOSE { self == .none ? CblasNoTrans : CblasTrans }
    }

    /// `C = alpha · op(A) · op(B) + beta · C`, row-major; op(A) is m × k, op(B) is k × n, C is m × n.
    ///
    /// `lda`, `ldb`, `ldc` are the leading dimensions of A, B, C *as stored* (row strides).
    public static func sgemm(
        _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(
            CblasRowMajor, transA.cblas, transB.cblas, blasint(m), blasint(n), blasint(k),
            alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }

    /// `y = alpha · op(A) · x + beta · y`, row-major A stored m × n (leading dimension lda).
    public static func sgemv(
        _ trans: Transpose, m: Int, n: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemv(CblasRowMajor, trans.cblas, blasint(m), blasint(n), alpha, a, blasint(lda), x, 1, beta, y, 1)
    }

    /// The OpenBLAS kernel selected for this CPU (for example `Haswell`, `SkylakeX`, `Cooperlake`).
    /// `OPENBLAS_CORETYPE` in the environment overrides OpenBLAS's own choice.
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// A warning when OpenBLAS runs a generic SSE-era kernel (Prescott, Core2, ...) on a CPU
    /// whose vector units the elementwise kernels use (AVX2 or AVX-512): typical of an OpenBLAS
    /// release older than the CPU (Debian 12's 0.3.21 on recent Xeons). Nil otherwise.
    public static var kernelWarning: String? {
        guard BLASKernelSelection.genericKernels.contains(coreName), VectorKernels.isa != "baseline" else { return nil }
        if let marker = ProcessInfo.processInfo.environment[BLASKernelSelection.markerVariable], marker.hasPrefix("declined:") {
            return "OpenBLAS runs its generic '\(coreName)' kernel: the vector kernel was probed and declined (\(marker))."
        }
        return "OpenBLAS chose its generic '\(coreName)' kernel on a CPU with \(VectorKernels.isa == "x86-64-v4" ? "AVX-512" : "AVX2"): "
            + "its sgemm runs several times below this CPU's peak. OPENBLAS_CORETYPE="
            + (VectorKernels.isa == "x86-64-v4" ? "SkylakeX" : "Haswell") + " in the environment selects the vector kernel."
    }

    /// OpenBLAS's build configuration string.
    public static var config: String { String(cString: openblas_get_config()) }

    /// OpenBLAS's own thread count for a single BLAS call. Inside ``Parallel/run(items:threads:_:)``
    /// it is held at 1 so the package's threads and OpenBLAS's never oversubscribe the cores.
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(max(1, newValue))) }
    }
}
