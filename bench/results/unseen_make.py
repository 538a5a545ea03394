import json
from pathlib import Path

import numpy as np
from skimage import color, data, filters, io

for name, img in (("coins", data.coins()), ("astronaut", data.astronaut())):
    out = Path("/tmp/unseen") / name
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    grey = img if img.ndim == 2 else color.rgb2gray(img)
    mask = (grey > filters.threshold_otsu(grey)).astype(np.uint8)
    t = 128
    for y in range(0, img.shape[0] - t + 1, t):
        for x in range(0, img.shape[1] - t + 1, t):
            io.imsave(out / "images" / f"{name}_{y}_{x}.png", img[y:y + t, x:x + t], check_contrast=False)
            io.imsave(out / "masks" / f"{name}_{y}_{x}.png", mask[y:y + t, x:x + t], check_contrast=False)
    (out / "classes.json").write_text(json.dumps(["background", "bright"]))
    print(name, len(list((out / "images").iterdir())))
