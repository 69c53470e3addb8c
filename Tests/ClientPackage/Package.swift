// swift-tools-version: 6.0
// A package that uses swift-long-attention the way the README's "Use it as a library" says, by
// path: `make client-check` builds it, so the products and the README's snippet stay honest.
import Foundation
import PackageDescription

let package = Package(
    name: "Client",
    dependencies: [
        // A path dependency's identity is its directory's name, which differs between checkouts
        // (a clone, a worktree): `name:` pins it to the manifest's name for `.product(package:)`.
        .package(name: "swift-long-attention", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "Client",
            dependencies: [
                .product(name: "LongAttention", package: "swift-long-attention"),
                .product(name: "AttentionTensor", package: "swift-long-attention"),
                .product(name: "LongContextModel", package: "swift-long-attention"),
                .product(name: "MixtureOfExperts", package: "swift-long-attention"),
                .product(name: "AttentionEvaluation", package: "swift-long-attention"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// Code that must not compile (an API the products keep to the package): built only when
// CLIENT_MISUSE is set, by `make client-check`, which expects the build to fail.
if ProcessInfo.processInfo.environment["CLIENT_MISUSE"] != nil {
    package.targets.append(.executableTarget(
        name: "Misuse",
        dependencies: [.product(name: "AttentionTensor", package: "swift-long-attention"),
                       .product(name: "LongContextModel", package: "swift-long-attention")],
        path: "Misuse"
    ))
}
