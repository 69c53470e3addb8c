import Foundation
import SwiftMPI
import XCTest

/// `MPI_COMM_WORLD` of this test process: a singleton (no `mpirun`), one rank. MPI is initialised
/// once for the whole test bundle and finalised when the bundle ends (MPI may be initialised only
/// once per process, so no test finalises it).
///
/// OpenMPI refuses to run as root unless both `OMPI_ALLOW_RUN_AS_ROOT` variables are set (its
/// launcher checks them; a singleton may start one): they are set here, before `MPI_Init`, when
/// absent, so `swift test` works as root without a wrapper.
enum OneRankWorld {
    private static let initialised: Result<Void, Error> = {
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0)
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0)
        // One rank copies nothing between processes; containers often forbid process_vm_readv.
        setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0)
        do {
            try MPI.initialize()
        } catch {
            return .failure(error)
        }
        XCTestObservationCenter.shared.addTestObserver(FinalizeMPI())
        return .success(())
    }()

    /// The world communicator (`timeout` seconds for every wait).
    static func communicator(timeout: Double = 30) throws -> Communicator {
        try initialised.get()
        return try Communicator.world(timeout: timeout)
    }
}

/// Finalises MPI after the last test of the bundle.
private final class FinalizeMPI: NSObject, XCTestObservation {
    func testBundleDidFinish(_ testBundle: Bundle) {
        MPI.finalize()
    }
}
