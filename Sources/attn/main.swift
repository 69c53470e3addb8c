import ArgumentParser
import AttentionTensor
import AttnCommands
import Foundation

// OpenBLAS's generic kernel on an AVX2/AVX-512 CPU: restart once with the matching kernel (probed
// first in a child process; a value the user set is never overridden).
BLASKernelSelection.selectKernel()

// Bad input of any kind ends with exactly one line on stderr and a non-zero exit; help and
// version requests print in full as usual.
do {
    var command = try Attn.parseAsRoot()
    try command.run()
} catch {
    let code = Attn.exitCode(for: error)
    if code == .success {
        Attn.exit(withError: error)   // --help and friends
    }
    let message = Attn.message(for: error)
        .split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        .filter { !$0.isEmpty }.joined(separator: " ")
    FileHandle.standardError.write(("attn: error: " + message + "\n").data(using: .utf8)!)
    exit(code.rawValue == 0 ? 1 : code.rawValue)
}
