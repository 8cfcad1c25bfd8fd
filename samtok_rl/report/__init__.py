"""The HTML reports of `samtok-rl inspect`: masks drawn over their images, curves as plots (`samtok_rl.inspector`)."""
