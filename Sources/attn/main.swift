import ArgumentParser
import AttentionTensor
import AttnCommands
import DistCommands
import Foundation

// OpenBLAS's generic kernel on an AVX2/AVX-512 CPU: restart once with the matching kernel (probed
// first in a child process; a value the user set is never overridden).
BLASKernelSelection.selectKernel()

/// `attn`: the library's commands (AttnCommands) plus `attn dist` (DistCommands, over MPI), kept
/// in separate targets so that AttnCommands and the core libraries do not depend on MPI.
struct AttnMain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attn", abstract: Attn.configuration.abstract,
        subcommands: Attn.configuration.subcommands + [Dist.self])
}

// Bad input of any kind ends with exactly one line on stderr and a non-zero exit; help and
// version requests print in full as usual.
do {
    var command = try AttnMain.parseAsRoot()
    try command.run()
} catch {
    let code = AttnMain.exitCode(for: error)
    if code == .success {
        AttnMain.exit(withError: error)   // --help and friends
    }
    let message = AttnMain.message(for: error)
        .split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        .filter { !$0.isEmpty }.joined(separator: " ")
    FileHandle.standardError.write(("attn: error: " + message + "\n").data(using: .utf8)!)
    exit(code.rawValue == 0 ? 1 : code.rawValue)
}
