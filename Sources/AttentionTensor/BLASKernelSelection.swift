import COpenBLAS
import Foundation

/// Choosing OpenBLAS's kernel when its own choice is a generic one.
///
/// OpenBLAS picks its kernel from the CPU model when the library loads. A release older than the
/// CPU (Debian 12's 0.3.21 on recent Xeons) does not know the model and falls back to a generic
/// SSE-era kernel (`Prescott`, `Core2`, …) that runs several times below the CPU's speed. The
/// kernel can only be chosen before the library loads, through `OPENBLAS_CORETYPE`, so an
/// executable that wants the fast kernel must restart itself with the variable set:
///
/// 1. ``decide(coreName:isa:environment:)``, a pure function: keep the kernel unless it is generic
///    on a CPU with AVX2 (→ `Haswell`) or AVX-512 (→ `SkylakeX`); never touch a value the user set;
///    never restart twice.
/// 2. A probe: the executable runs itself in a child process with the candidate kernel, which only
///    multiplies a 96 × 80 × 72 GEMM against a float64 reference and exits — so a kernel that
///    crashes or computes wrong results on this CPU costs a warning, not the command.
/// 3. If the probe agrees, the executable replaces itself (`execv`) with the variable set, and a
///    marker variable records what was chosen and why (``status``).
///
/// `attn` and `attention-bench` call ``selectKernel(arguments:)`` first thing; `attn info` prints
/// ``status``. A library user sets `OPENBLAS_CORETYPE` before starting the process, or calls the
/// same function from their own `main`.
public enum BLASKernelSelection {
    /// Kernels OpenBLAS falls back to when it does not know the CPU.
    public static let genericKernels: Set<String> = ["Prescott", "Core2", "Katmai", "Coppermine", "Northwood",
                                                     "Banias", "Penryn", "Dunnington", "Atom", "Nehalem"]

    /// Set in the environment of the restarted process: "<kernel>" when it was chosen, or
    /// "declined:<kernel>:<why>" when the probe refused it.
    public static let markerVariable = "ATTN_OPENBLAS_CHOICE"
    /// Set in the probe child's environment.
    public static let probeVariable = "ATTN_OPENBLAS_PROBE"

    /// What to do about the kernel.
    public enum Decision: Equatable, Sendable {
        /// Keep OpenBLAS's kernel; the reason says why.
        case keep(reason: String)
        /// Restart with `OPENBLAS_CORETYPE` set to this kernel (after a probe).
        case restart(coreType: String, reason: String)
    }

    /// The decision as a pure function of OpenBLAS's kernel name, the elementwise kernels' ISA
    /// (`x86-64-v4`, `x86-64-v3`, `baseline`: what the CPU supports) and the environment.
    public static func decide(coreName: String, isa: String, environment: [String: String]) -> Decision {
        if let set = environment["OPENBLAS_CORETYPE"], !set.isEmpty {
            if let marker = environment[markerVariable], marker == set {
                return .keep(reason: "OPENBLAS_CORETYPE=\(set) chosen by this program: OpenBLAS's own choice was a generic kernel")
            }
            return .keep(reason: "OPENBLAS_CORETYPE=\(set) set by the user (never overridden)")
        }
        if let marker = environment[markerVariable] {
            return .keep(reason: "a restart was already tried (\(marker)); keeping \(coreName)")
        }
        guard genericKernels.contains(coreName) else {
            return .keep(reason: "OpenBLAS chose \(coreName) for this CPU")
        }
        switch isa {
        case "x86-64-v4":
            return .restart(coreType: "SkylakeX", reason: "OpenBLAS chose its generic \(coreName) kernel on a CPU with AVX-512")
        case "x86-64-v3":
            return .restart(coreType: "Haswell", reason: "OpenBLAS chose its generic \(coreName) kernel on a CPU with AVX2")
        default:
            return .keep(reason: "OpenBLAS chose \(coreName); this CPU has neither AVX2 nor AVX-512")
        }
    }

    /// What the running process uses and why (for `attn info` and the benchmark's metadata).
    public static var status: String {
        let env = ProcessInfo.processInfo.environment
        if let marker = env[markerVariable], marker.hasPrefix("declined:") {
            let parts = marker.split(separator: ":", maxSplits: 2).map(String.init)
            return "\(BLAS.coreName) (OpenBLAS's own choice; the \(parts.count > 1 ? parts[1] : "?") kernel was probed and declined: \(parts.count > 2 ? parts[2] : "?"))"
        }
        switch decide(coreName: BLAS.coreName, isa: VectorKernels.isa, environment: env) {
        case .keep(let reason): return "\(BLAS.coreName) (\(reason))"
        case .restart(_, let reason): return "\(BLAS.coreName) (\(reason); not restarted)"
        }
    }

    /// The probe's check: a GEMM with awkward sizes against a float64 reference. True when every
    /// element agrees to 1e-4 relative.
    public static func gemmAgreesWithReference() -> Bool {
        let (m, n, k) = (96, 80, 72)
        var a = [Float](repeating: 0, count: m * k), b = [Float](repeating: 0, count: k * n)
        var state: UInt32 = 12345
        func next() -> Float { state = state &* 1_664_525 &+ 1_013_904_223; return Float(state >> 8) / Float(1 << 24) - 0.5 }
        for i in a.indices { a[i] = next() }
        for i in b.indices { b[i] = next() }
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    BLAS.sgemm(.none, .none, m: m, n: n, k: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: n,
                               c: pc.baseAddress!, ldc: n)
                }
            }
        }
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for t in 0..<k { s += Double(a[i * k + t]) * Double(b[t * n + j]) }
                if !(abs(Double(c[i * n + j]) - s) <= 1e-4 * max(1, abs(s))) { return false }
            }
        }
        return true
    }

    /// Call first thing in an executable's `main`. In a probe child: runs the check and exits.
    /// Otherwise, when ``decide(coreName:isa:environment:)`` says so and the probe agrees, replaces
    /// the process with itself under `OPENBLAS_CORETYPE` (never returns then); when the probe
    /// fails, prints a warning to stderr, records why for ``status`` and carries on with
    /// OpenBLAS's own kernel.
    public static func selectKernel(arguments: [String] = CommandLine.arguments) {
        let env = ProcessInfo.processInfo.environment
        if env[probeVariable] != nil { exit(gemmAgreesWithReference() ? 0 : 3) }
        // ATTN_OPENBLAS_ASSUME_CORE: a testing hook that makes any machine look like one whose
        // OpenBLAS fell back to a generic kernel, so the probe and restart can be exercised.
        let core = env["ATTN_OPENBLAS_ASSUME_CORE"] ?? BLAS.coreName
        guard case .restart(let coreType, _) = decide(coreName: core, isa: VectorKernels.isa, environment: env) else {
            return
        }
        let exe = "/proc/self/exe"
        var marker = coreType
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: exe)
        probe.arguments = []
        var childEnv = env
        childEnv["OPENBLAS_CORETYPE"] = coreType
        childEnv[probeVariable] = "1"
        probe.environment = childEnv
        probe.standardOutput = FileHandle.nullDevice
        probe.standardError = FileHandle.nullDevice
        do {
            try probe.run()
            probe.waitUntilExit()
            if probe.terminationReason != .exit || probe.terminationStatus != 0 {
                marker = "declined:\(coreType):the probe " + (probe.terminationReason == .exit
                    ? "computed a GEMM that disagrees with float64 (exit \(probe.terminationStatus))"
                    : "crashed (signal \(probe.terminationStatus))")
            }
        } catch {
            marker = "declined:\(coreType):the probe could not start (\(error))"
        }
        setenv(markerVariable, marker, 1)
        if marker.hasPrefix("declined:") {
            FileHandle.standardError.write("warning: OpenBLAS runs its generic \(BLAS.coreName) kernel; \(coreType) was probed and declined (\(marker.split(separator: ":", maxSplits: 2).last ?? "")).\n".data(using: .utf8)!)
            return
        }
        setenv("OPENBLAS_CORETYPE", coreType, 1)
        let argv = arguments.map { strdup($0) } + [nil]
        execv(exe, argv)
        // execv returned: it failed; carry on with OpenBLAS's own kernel.
        for p in argv { free(p) }
    }
}
